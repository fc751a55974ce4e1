//! A relay tree's shape: positions, parents, children and subtrees of a complete tree laid
//! over the route in order, and the tree section a relayed header carries ([`Tree`]).

/// The length of a relayed transfer's identifier ([`Tree::transfer`]).
pub const TRANSFER_ID_LEN: usize = 16;

/// A relay tree: the sender is position 0 and the route's hops are positions 1 to n; the
/// children of position `p` are positions `fanout·p + 1` to `fanout·p + fanout` that exist.
/// A fan-out of 1 is a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Children per host, at least 1.
    pub fanout: u8,
    /// The receiver's position, 1 to the route's length.
    pub position: u16,
    /// The transfer's identifier, chosen at random by the sender and the same at every host:
    /// by it (and the position) a receiver finds the stream a resuming header continues.
    pub transfer: [u8; TRANSFER_ID_LEN],
    /// This header resumes the stream at this position: the receiver answers with the payload
    /// bytes it already holds, and the sender goes on from there (a parent adopting the
    /// children of a host that died). A receiver that holds nothing of it answers 0.
    pub resume: bool,
    /// How long, in milliseconds, this receiver's parent waits for it to accept data before it
    /// gives up on it (its stall timeout for this receiver), at least 1. A relay gives up on a
    /// stalled child of its own within half of it ([`Tree::child_stall_ms`]), so that a frozen
    /// host costs only itself and the adoption of the hosts below it, never its parent.
    pub stall_ms: u32,
    /// The connect timeout the sender asked for, in milliseconds, at least 1: a relay connects
    /// to its children (and to the hosts it adopts) within it.
    pub connect_ms: u32,
}

impl Tree {
    /// The positions of `position`'s children in a tree of `hosts` hosts.
    pub fn children_of(fanout: u8, position: usize, hosts: usize) -> std::ops::Range<usize> {
        let k = usize::from(fanout.max(1));
        let first = position.saturating_mul(k).saturating_add(1);
        let end = first.saturating_add(k).min(hosts + 1);
        first..end.max(first)
    }

    /// The position of `position`'s parent (0: the sender).
    pub fn parent_of(fanout: u8, position: usize) -> usize {
        position.saturating_sub(1) / usize::from(fanout.max(1))
    }

    /// Every position below `position`, parents before their children.
    pub fn descendants_of(fanout: u8, position: usize, hosts: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut next = vec![position];
        while let Some(p) = next.pop() {
            for c in Tree::children_of(fanout, p, hosts).rev() {
                next.push(c);
            }
            if p != position {
                out.push(p);
            }
        }
        out
    }

    /// `position` and every position below it, in order: the hosts a header for `position`
    /// carries.
    pub fn subtree(fanout: u8, position: usize, hosts: usize) -> Vec<usize> {
        let mut all = Tree::descendants_of(fanout, position, hosts);
        all.push(position);
        all.sort_unstable();
        all
    }

    /// How many levels of hosts hang below `position` (0 for a leaf).
    pub fn height_below(fanout: u8, position: usize, hosts: usize) -> usize {
        let mut levels = 0;
        let mut p = position;
        // The first child is always on the deepest path of a complete tree over a list.
        while let Some(c) = Tree::children_of(fanout, p, hosts).next() {
            levels += 1;
            p = c;
        }
        levels
    }

    /// The stall timeout a receiver with this tree uses for its own children (and sends them
    /// as theirs): half of its parent's for it, and at least 1 ms.
    pub fn child_stall_ms(self) -> u32 {
        (self.stall_ms / 2).max(1)
    }
}
