//! The reports of a tree: what a parent says of each host below it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use teecast_proto::wire::{AckStatus, HostReport, Tree};

use crate::dest::{Delivered, DestFailure, Live, LiveEvent};
use crate::sync::lock;
/// What a parent (at `parent`) reports of its child at `position`, given how the child's
/// stream went.
pub(crate) fn report_of(
    position: usize,
    parent: usize,
    outcome: &Result<Delivered, DestFailure>,
    bytes: u64,
) -> HostReport {
    match outcome {
        Ok(_) => report(position, parent, AckStatus::Ok, bytes, String::new()),
        Err(e) => failure_report(position, parent, e, bytes),
    }
}

/// A report of the host at `position`, whose parent is at `parent`.
fn report(
    position: usize,
    parent: usize,
    status: AckStatus,
    bytes: u64,
    message: String,
) -> HostReport {
    HostReport {
        position: u16::try_from(position).unwrap_or(u16::MAX),
        parent: u16::try_from(parent).unwrap_or(u16::MAX),
        status,
        bytes,
        message,
    }
}
/// What a parent (at `parent`) reports of its child at `position` that failed with `e`.
fn failure_report(position: usize, parent: usize, e: &DestFailure, bytes: u64) -> HostReport {
    let (status, message) = match e {
        DestFailure::Refused {
            status, message, ..
        } => (*status, message.clone()),
        e => (AckStatus::Unreached, e.to_string()),
    };
    report(position, parent, status, bytes, message)
}

/// The reports a relay has to send up mid-stream, as its destinations learn them.
pub(crate) type Upstream = Arc<UpstreamQueue>;

/// The reports to send up ([`Upstream`]), and whether the stream's forwarding is over.
#[derive(Default)]
pub(crate) struct UpstreamQueue {
    state: Mutex<(Vec<HostReport>, bool)>,
    changed: Condvar,
}

impl UpstreamQueue {
    /// Adds to the reports with `add`.
    pub(crate) fn push(&self, add: impl FnOnce(&mut Vec<HostReport>)) {
        add(&mut lock(&self.state).0);
        self.changed.notify_all();
    }

    /// Takes the reports so far.
    pub(crate) fn take(&self) -> Vec<HostReport> {
        std::mem::take(&mut lock(&self.state).0)
    }

    /// Wakes whoever waits ([`UpstreamQueue::wait`]), with or without reports.
    pub(crate) fn wake(&self) {
        self.changed.notify_all();
    }

    /// The forwarding is over: nothing more is sent up (the ack says the rest).
    pub(crate) fn close(&self) {
        lock(&self.state).1 = true;
        self.changed.notify_all();
    }

    /// Waits until reports are added, [`UpstreamQueue::wake`] or `timeout`; false once
    /// closed.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let state = lock(&self.state);
        if state.1 {
            return false;
        }
        let state = match state.0.is_empty() {
            true => {
                self.changed
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            false => state,
        };
        !state.1
    }
}

/// Where a relay's destination for the host at `position` (served from `parent`) tells what
/// it learns: as reports, into `up`.
pub(crate) fn live_up(up: &Upstream, position: usize, parent: usize) -> Live {
    let up = up.clone();
    Arc::new(move |e: LiveEvent<'_>| {
        up.push(|up| match e {
            LiveEvent::Reports(r) => up.extend_from_slice(r),
            LiveEvent::Delivered(bytes) => {
                up.push(report_of(position, parent, &Ok(Delivered::Relayed), bytes));
            }
            LiveEvent::Failed(e, bytes) => up.push(failure_report(position, parent, e, bytes)),
        })
    })
}

/// Every host below `me`, one report each, in tree order: the best of those given for it
/// (confirmed over refused over unreached, the later of equals), or, where none was given,
/// unreached because of the first ancestor that failed.
pub(crate) fn complete(
    fanout: u8,
    hosts: usize,
    me: usize,
    reports: &[HostReport],
) -> Vec<HostReport> {
    let rank = |r: &HostReport| match r.status {
        AckStatus::Ok => 2,
        AckStatus::Unreached | AckStatus::Adopted => 0,
        _ => 1,
    };
    let mut out: Vec<HostReport> = Vec::new();
    for d in Tree::descendants_of(fanout, me, hosts) {
        let best = reports
            .iter()
            .filter(|r| usize::from(r.position) == d)
            .max_by_key(|r| rank(r))
            .cloned();
        let report = best.unwrap_or_else(|| {
            let parent = Tree::parent_of(fanout, d);
            let why = out
                .iter()
                .find(|r| usize::from(r.position) == parent)
                .filter(|r| r.status != AckStatus::Ok)
                .map_or_else(
                    || "its relay reported nothing of it".to_string(),
                    |r| match r.message.strip_prefix(FAILED_BEFORE) {
                        Some(_) => r.message.clone(),
                        None => format!("{FAILED_BEFORE}{}", r.message),
                    },
                );
            HostReport {
                position: u16::try_from(d).unwrap_or(u16::MAX),
                parent: u16::try_from(parent).unwrap_or(u16::MAX),
                status: AckStatus::Unreached,
                bytes: 0,
                message: why,
            }
        });
        out.push(report);
    }
    out
}

/// How the report of a host not reached because a relay before it failed begins.
pub(crate) const FAILED_BEFORE: &str = "a relay before it failed: ";

/// What each relayed destination's acknowledgement reported of the hosts below it, a slot per
/// destination.
pub(crate) struct Reports(Vec<Mutex<Vec<HostReport>>>);

impl Reports {
    /// A slot for each of `destinations`.
    pub(crate) fn new(destinations: usize) -> Reports {
        Reports((0..destinations).map(|_| Mutex::default()).collect())
    }

    /// The slot of destination `index`.
    pub(crate) fn slot(&self, index: usize) -> &Mutex<Vec<HostReport>> {
        &self.0[index]
    }

    /// Takes what destination `index` reported.
    pub(crate) fn take(&self, index: usize) -> Vec<HostReport> {
        std::mem::take(&mut *lock(&self.0[index]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_below_gets_one_report_and_the_best_wins() {
        let r = |position: u16, parent: u16, status| HostReport {
            position,
            parent,
            status,
            bytes: 0,
            message: format!("m{position}"),
        };
        // A chain of 4 under the sender: host 1 died; host 2 was adopted and confirmed
        // (a second, worse report of it loses); nothing was said of 3 and 4.
        let given = [
            r(1, 0, AckStatus::Unreached),
            r(2, 1, AckStatus::Unreached),
            r(2, 0, AckStatus::Ok),
        ];
        let all = complete(1, 4, 0, &given);
        let positions: Vec<u16> = all.iter().map(|r| r.position).collect();
        assert_eq!(positions, [1, 2, 3, 4]);
        assert_eq!(all[1].status, AckStatus::Ok);
        assert_eq!(all[1].parent, 0);
        assert_eq!(all[2].status, AckStatus::Unreached);
        assert_eq!(all[2].message, "its relay reported nothing of it");
        let dead = complete(1, 4, 0, &given[..1]);
        assert_eq!(dead[1].message, "a relay before it failed: m1");
        assert_eq!(dead[3].message, "a relay before it failed: m1");
    }
}
