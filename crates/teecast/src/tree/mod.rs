//! The tree layer: a relayed transfer's route, the consumers of a host with children, the
//! replay of what it passed on, the adoption of a failed child's children, and the reports of
//! every host below. It stands on the destination layer ([`crate::dest`]) and the engine; `send`
//! (at the sender) and the receiver's relay (at every other host) stand on it.

pub(crate) mod adopt;
pub(crate) mod consumer;
pub(crate) mod report;
pub(crate) mod ring;
pub(crate) mod route;
