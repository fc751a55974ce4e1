//! The hosts one host of a relayed transfer may contact — its children, and any host below them
//! it adopts — each name resolved once.
//!
//! Every connection a sender or relay makes in a tree goes to the addresses resolved here, so
//! what a relay checked (an unauthenticated stream is forwarded among loopback addresses only)
//! is what it connects to: the resolver is not asked again between the check and the connect,
//! and a host reached by adoption was checked with the rest.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use teecast_proto::wire::{AckStatus, HostReport, Tree};

use crate::transport::{self, ConnectError};
/// The route of a transfer as seen from the host at `me`: the addresses of every host of its
/// subtree (not its own).
#[derive(Debug)]
pub(crate) struct Route {
    names: Vec<String>,
    /// By position − 1; `None` outside the subtree.
    hosts: Vec<Option<Resolved>>,
}

/// A name's addresses, or why it has none (kept to be reported when it is contacted).
type Resolved = Result<Vec<SocketAddr>, (io::ErrorKind, String)>;

impl Route {
    /// Resolves the hosts below `me` in the tree of `fanout` over `names` (positions from 1;
    /// the sender is 0).
    pub(crate) fn resolve(names: &[String], fanout: u8, me: usize) -> Route {
        let mut hosts: Vec<Option<Resolved>> = vec![None; names.len()];
        let mut next: Vec<usize> = Tree::children_of(fanout, me, names.len()).collect();
        while let Some(p) = next.pop() {
            hosts[p - 1] = Some(
                names[p - 1]
                    .to_socket_addrs()
                    .map(Iterator::collect)
                    .map_err(|e| (e.kind(), e.to_string())),
            );
            next.extend(Tree::children_of(fanout, p, names.len()));
        }
        Route {
            names: names.to_vec(),
            hosts,
        }
    }

    /// How many hosts the route has, the sender not counted.
    pub(crate) fn hosts(&self) -> usize {
        self.names.len()
    }

    /// The name of the host at `position`.
    pub(crate) fn name(&self, position: usize) -> &str {
        &self.names[position - 1]
    }

    /// The first host of the subtree with an address that is not a loopback one, and that
    /// address.
    pub(crate) fn beyond_loopback(&self) -> Option<(usize, SocketAddr)> {
        self.hosts.iter().enumerate().find_map(|(i, host)| {
            let addrs = host.as_ref()?.as_ref().ok()?;
            let outside = addrs.iter().find(|a| !a.ip().is_loopback())?;
            Some((i + 1, *outside))
        })
    }

    /// Connects to the host at `position` (of the subtree) at the addresses resolved for it.
    pub(crate) fn connect(
        &self,
        position: usize,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let name = self.name(position);
        match &self.hosts[position - 1] {
            Some(Ok(addrs)) => transport::connect_to(name, addrs, timeout),
            Some(Err((kind, why))) => Err(ConnectError::Resolve {
                address: name.to_string(),
                source: io::Error::new(*kind, why.clone()),
            }),
            None => Err(ConnectError::Resolve {
                address: name.to_string(),
                source: io::Error::other("it is not below this host in the tree"),
            }),
        }
    }
}

/// Connects to the children of `me` in the tree over `route`, all at once; a child that cannot
/// be reached is reported unreached and its own children are tried in its place (adopted), and
/// so on down, a level at a time. Returns the connections made, by position, and the reports of
/// the hosts that were not.
pub(crate) fn connect_adopting(
    fanout: u8,
    route: &Route,
    me: usize,
    timeout: Duration,
) -> (Vec<(usize, TcpStream)>, Vec<HostReport>) {
    let position = |p: usize| u16::try_from(p).unwrap_or(u16::MAX);
    let mut served = Vec::new();
    let mut dead = Vec::new();
    let mut level: Vec<usize> = Tree::children_of(fanout, me, route.hosts()).collect();
    while !level.is_empty() {
        let tried: Vec<(usize, Result<TcpStream, ConnectError>)> = std::thread::scope(|s| {
            let started: Vec<_> = level
                .iter()
                .map(|&p| {
                    let connecting = std::thread::Builder::new()
                        .name("teecast-connect".into())
                        .spawn_scoped(s, move || route.connect(p, timeout));
                    (p, connecting)
                })
                .collect();
            started
                .into_iter()
                .map(|(p, connecting)| {
                    let failed = |why: String| ConnectError::Resolve {
                        address: route.name(p).to_string(),
                        source: io::Error::other(why),
                    };
                    let result = match connecting {
                        Ok(handle) => handle.join().unwrap_or_else(|_| {
                            Err(failed("the connecting thread panicked".into()))
                        }),
                        Err(e) => Err(failed(format!("cannot start a thread to connect: {e}"))),
                    };
                    (p, result)
                })
                .collect()
        });
        let mut below = Vec::new();
        for (p, result) in tried {
            match result {
                Ok(stream) => served.push((p, stream)),
                Err(e) => {
                    dead.push(HostReport {
                        position: position(p),
                        parent: position(me),
                        status: AckStatus::Unreached,
                        bytes: 0,
                        message: format!("{e}; the hosts below it were adopted by its parent"),
                    });
                    below.extend(Tree::children_of(fanout, p, route.hosts()));
                }
            }
        }
        level = below;
    }
    served.sort_by_key(|(p, _)| *p);
    (served, dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Hosts outside the subtree are neither resolved nor contacted; those inside are, to any
    /// depth.
    #[test]
    fn only_the_subtree_is_resolved() {
        // Fanout 1 (a chain): position 2's subtree is 3 and 4.
        let route = Route::resolve(
            &names(&["10.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1", "10.0.0.4:1"]),
            1,
            2,
        );
        assert!(route.hosts[0].is_none() && route.hosts[1].is_none());
        assert_eq!(
            route.beyond_loopback(),
            Some((4, "10.0.0.4:1".parse().unwrap()))
        );
        let err = route.connect(1, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("not below this host"), "{err}");
    }

    #[test]
    fn a_name_that_does_not_resolve_is_reported_when_contacted() {
        let route = Route::resolve(&names(&["127.0.0.1:1", "no port here"]), 1, 1);
        assert_eq!(route.beyond_loopback(), None);
        let err = route.connect(2, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ConnectError::Resolve { .. }), "{err:?}");
    }
}
