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
    /// stalled child of its own sooner ([`Tree::child_stall_ms`]), so that a frozen host costs
    /// only itself and the adoption of the hosts below it, never its parent.
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

    /// The stall timeout a receiver with this tree, in a route of `hosts`, uses for its own
    /// children (and the hosts it adopts) and sends them as theirs: half of its parent's for
    /// it, but at least [`Tree::stall_floor_ms`] of the levels below its children.
    ///
    /// A parent's timeout for a host is then at least that floor too (by induction from the
    /// sender, which starts at [`Tree::sender_stall_ms`] or more), so each level gives up on a
    /// stalled child at least [`STALL_STEP_MS`] (or half its own timeout) before its parent
    /// could give up on it; and no host is dropped for a pause shorter than a second.
    pub fn child_stall_ms(self, hosts: usize) -> u32 {
        let below = Tree::height_below(self.fanout, usize::from(self.position), hosts);
        (self.stall_ms / 2).max(Tree::stall_floor_ms(below.saturating_sub(1)))
    }

    /// The least stall timeout, in milliseconds, a host with `levels` levels of hosts below it
    /// is given by its parent: [`STALL_FLOOR_MS`] for a leaf, [`STALL_STEP_MS`] more for each
    /// level below.
    pub fn stall_floor_ms(levels: usize) -> u32 {
        let levels = u32::try_from(levels).unwrap_or(u32::MAX);
        STALL_FLOOR_MS.saturating_add(STALL_STEP_MS.saturating_mul(levels))
    }

    /// The least stall timeout, in milliseconds, the sender of a tree of `fanout` over `hosts`
    /// gives its own children: the floor of the levels below them. A shorter one asked for is
    /// raised to it.
    pub fn sender_stall_ms(fanout: u8, hosts: usize) -> u32 {
        let below = Tree::height_below(fanout, 0, hosts);
        Tree::stall_floor_ms(below.saturating_sub(1))
    }
}

/// The least stall timeout, in milliseconds, a leaf of a relay tree is given
/// ([`Tree::stall_floor_ms`]).
pub const STALL_FLOOR_MS: u32 = 1_000;

/// How much longer, in milliseconds, the least stall timeout of a host is for each level of
/// hosts below it ([`Tree::stall_floor_ms`]): the least time between a relay giving up on a
/// stalled child and its own parent being allowed to give up on the relay.
pub const STALL_STEP_MS: u32 = 250;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(fanout: u8, position: u16, stall_ms: u32) -> Tree {
        Tree {
            fanout,
            position,
            transfer: [1; TRANSFER_ID_LEN],
            resume: false,
            stall_ms,
            connect_ms: 1,
        }
    }

    /// Follows a chain of `hosts` down from the sender's `stall_ms`: each host's timeout for
    /// its child, by depth.
    fn down_a_chain(hosts: usize, stall_ms: u32) -> Vec<u32> {
        let mut stall = stall_ms.max(Tree::sender_stall_ms(1, hosts));
        let mut out = vec![stall];
        for position in 1..hosts {
            stall = at(1, position as u16, stall).child_stall_ms(hosts);
            out.push(stall);
        }
        out
    }

    #[test]
    fn timeouts_halve_down_to_a_floor_that_grows_with_the_levels_below() {
        // Depth 11 under 30 s: halving alone gave the last host 29 ms.
        let chain = down_a_chain(11, 30_000);
        assert_eq!(
            chain,
            [
                30_000, 15_000, 7_500, 3_750, 2_500, 2_250, 2_000, 1_750, 1_500, 1_250, 1_000
            ]
        );
        // Every host's timeout for its child: below its parent's for it, by at least the step
        // (or half), and at least the floor of the levels below that child.
        for (depth, pair) in chain.windows(2).enumerate() {
            let (parent, child) = (pair[0], pair[1]);
            assert!(child < parent && parent - child >= STALL_STEP_MS.min(parent / 2));
            assert!(child >= Tree::stall_floor_ms(11 - depth - 2), "{chain:?}");
        }
    }

    #[test]
    fn the_sender_needs_the_floor_of_the_levels_below_its_children() {
        assert_eq!(Tree::sender_stall_ms(1, 1), STALL_FLOOR_MS);
        assert_eq!(Tree::sender_stall_ms(1, 3), 1_500);
        // 10,000 hosts, K = 2: 13 levels, 12 below the first.
        assert_eq!(Tree::sender_stall_ms(2, 10_000), 4_000);
        // A sender asking for 100 ms of a chain of 5 starts at 2 s; each level is still below
        // the one above it.
        let chain = down_a_chain(5, 100);
        assert_eq!(chain, [2_000, 1_750, 1_500, 1_250, 1_000]);
    }

    #[test]
    fn the_floor_saturates() {
        assert_eq!(Tree::stall_floor_ms(usize::MAX), u32::MAX);
        assert_eq!(at(2, 1, u32::MAX).child_stall_ms(3), u32::MAX / 2);
    }
}
