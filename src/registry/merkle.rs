//! Anti-entropy as a hash tree over a key range, without I/O: the owner and a replica each
//! hash what they hold in the owner's range, and the owner walks down from the root only into
//! the subtrees whose hashes differ. One differing instance among n costs about log₁₆ n
//! exchanges of 16 small hashes each, instead of a digest of all n keys.
//!
//! The tree is implicit: every store key falls in a bucket (the first 32 bits of SHA-1 of the
//! key, so a key's versions always share a bucket), and a node at level `l` is the set of
//! buckets whose top `4·l` bits equal its prefix. Its hash is the wrapping sum of its items'
//! hashes (64 bits of SHA-1 of key and [`Mark`]), so either side computes any node directly
//! from its items, and both agree on the shape whatever their sizes. The walk stops at a node
//! the owner holds few items in, or at [`DEPTH`]; the items of those nodes are then compared
//! one by one by the usual digest.
//!
//! [`Descent`] is the owner's side as a state machine (the agent sends its requests over ring
//! RPC; tests answer them from another item set); [`children`] is the replica's answer.

use std::collections::HashMap;

use sha1::{Digest, Sha1};

use super::unit::Mark;

/// Children per node.
pub const FANOUT: usize = 16;

/// The deepest level the walk goes to: 16⁵ ≈ one million leaves.
pub const DEPTH: u8 = 5;

/// A node the owner holds at most this many items in is compared item by item.
pub const LEAF_ITEMS: usize = 32;

/// A node of the tree: (level, prefix), prefix being the bucket's top `4·level` bits.
pub type Node = (u8, u32);

/// The root: every bucket.
pub const ROOT: Node = (0, 0);

/// An item's bucket: the first 32 bits of SHA-1 of its key.
pub fn bucket(key: &str) -> u32 {
    let h = Sha1::digest(key.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// An item's hash: 64 bits of SHA-1 of its key and mark.
fn item_hash(key: &str, mark: &Mark) -> u64 {
    /// The mark's text fed to the hash as it is formatted: the same digest as hashing the
    /// whole text, without a `String` for every item.
    struct Feed<'a>(&'a mut Sha1);
    impl std::fmt::Write for Feed<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"\n");
    // Writing into a hash cannot fail.
    let _ = std::fmt::Write::write_fmt(&mut Feed(&mut h), format_args!("{mark}"));
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The node at `level` that bucket `b` falls in.
fn ancestor(b: u32, level: u8) -> Node {
    if level == 0 {
        return ROOT;
    }
    // A level past 8 (32 bits of 4 each) comes only from a peer that is wrong: it gets the
    // whole bucket, not an overflow.
    let shift = 32u32.saturating_sub(4 * u32::from(level));
    (level, b.checked_shr(shift).unwrap_or(0))
}

/// A set of nodes (of any levels), asked whether a key lies under one of them.
pub struct Cover {
    nodes: std::collections::HashSet<Node>,
    levels: Vec<u8>,
}

impl Cover {
    pub fn new(nodes: &[Node]) -> Cover {
        let mut levels: Vec<u8> = nodes.iter().map(|n| n.0).collect();
        levels.sort_unstable();
        levels.dedup();
        Cover {
            nodes: nodes.iter().copied().collect(),
            levels,
        }
    }

    /// The node of the set that `key` lies under, if any.
    pub fn find(&self, key: &str) -> Option<Node> {
        let b = bucket(key);
        self.levels
            .iter()
            .map(|l| ancestor(b, *l))
            .find(|n| self.nodes.contains(n))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }
}

/// One side's items, hashed once.
pub struct Items {
    items: Vec<(u32, u64)>,
}

impl Items {
    pub fn new<'a>(items: impl IntoIterator<Item = &'a (String, Mark)>) -> Items {
        Items {
            items: items
                .into_iter()
                .map(|(k, m)| (bucket(k), item_hash(k, m)))
                .collect(),
        }
    }

    /// For every node of `nodes` (all of one level below [`DEPTH`]), its children's hashes and
    /// item counts, in the order asked.
    pub fn children(&self, nodes: &[Node]) -> Vec<[(u64, u32); FANOUT]> {
        let index: HashMap<Node, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut out = vec![[(0u64, 0u32); FANOUT]; nodes.len()];
        let Some(level) = nodes.first().map(|n| n.0) else {
            return out;
        };
        if level >= DEPTH {
            return out;
        }
        for (b, h) in &self.items {
            if let Some(i) = index.get(&ancestor(*b, level)) {
                let child = ancestor(*b, level + 1).1 as usize % FANOUT;
                let slot = &mut out[*i][child];
                slot.0 = slot.0.wrapping_add(*h);
                slot.1 += 1;
            }
        }
        out
    }
}

/// The replica's answer to a request for `nodes`' children: hashes only (the owner needs
/// no counts of the replica's).
pub fn children(items: &Items, nodes: &[Node]) -> Vec<[u64; FANOUT]> {
    items
        .children(nodes)
        .into_iter()
        .map(|c| c.map(|(h, _)| h))
        .collect()
}

/// What the owner does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask the replica for these nodes' children (all of one level).
    Ask(Vec<Node>),
    /// Done: compare the items under these nodes one by one (none: the copies agree).
    Compare(Vec<Node>),
}

/// The owner's walk down the tree.
pub struct Descent<'a> {
    mine: &'a Items,
    asked: Vec<Node>,
    leaves: Vec<Node>,
    /// Exchanges made so far.
    pub exchanges: usize,
}

impl<'a> Descent<'a> {
    /// Start at the root: the first request asks for its children.
    pub fn start(mine: &'a Items) -> (Descent<'a>, Step) {
        let d = Descent {
            mine,
            asked: vec![ROOT],
            leaves: Vec::new(),
            exchanges: 0,
        };
        (d, Step::Ask(vec![ROOT]))
    }

    /// The replica's children hashes for the nodes last asked, in order.
    pub fn on_answer(&mut self, theirs: &[[u64; FANOUT]]) -> Step {
        self.exchanges += 1;
        let mine = self.mine.children(&self.asked);
        let mut next = Vec::new();
        for (i, node) in self.asked.iter().enumerate() {
            let Some(their) = theirs.get(i) else {
                // A short answer: compare the whole node item by item.
                self.leaves.push(*node);
                continue;
            };
            for c in 0..FANOUT {
                let (hash, count) = mine[i][c];
                if hash == their[c] {
                    continue;
                }
                let child = (node.0 + 1, (node.1 << 4) | c as u32);
                if child.0 >= DEPTH || (count as usize) <= LEAF_ITEMS {
                    self.leaves.push(child);
                } else {
                    next.push(child);
                }
            }
        }
        if next.is_empty() {
            Step::Compare(std::mem::take(&mut self.leaves))
        } else {
            self.asked = next.clone();
            Step::Ask(next)
        }
    }
}

#[cfg(test)]
mod tests {

    /// A node a peer sends with a level deeper than the 32 bits of a bucket is no panic (in
    /// builds with overflow checks): it covers nothing it should not.
    #[test]
    fn a_peer_node_deeper_than_32_bits_does_not_panic() {
        let cover = Cover::new(&[(9, 0), (255, 7)]);
        let _ = cover.contains("u/a/1");
        assert!(Cover::new(&[ROOT]).contains("u/a/1"));
    }

    use super::*;
    use crate::registry::hlc::Hlc;

    fn mark(v: u64) -> Mark {
        Mark {
            version: Hlc {
                wall_ms: v,
                logical: 0,
                node: 1,
            },
            content: 7,
        }
    }

    /// The item hash is part of the protocol between agents: feeding the mark's text to the
    /// hash piece by piece must give the digest of the whole text, as before.
    #[test]
    fn an_item_hash_is_sha1_of_the_key_a_newline_and_the_marks_text() {
        for (key, m) in [
            ("u/a/1", mark(0)),
            ("s/pay", mark(1_765_000_000_123)),
            ("", mark(9)),
        ] {
            let d = Sha1::digest(format!("{key}\n{m}").as_bytes());
            let want = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            assert_eq!(item_hash(key, &m), want, "{key} {m}");
        }
    }

    fn set(n: usize) -> Vec<(String, Mark)> {
        (0..n)
            .map(|i| (format!("u/svc-{}/i{i}", i % 50), mark(1)))
            .collect()
    }

    /// Run the walk of `mine` against `theirs`; (nodes to compare, exchanges).
    fn walk(mine: &[(String, Mark)], theirs: &[(String, Mark)]) -> (Vec<Node>, usize) {
        let (m, t) = (Items::new(mine), Items::new(theirs));
        let (mut d, mut step) = Descent::start(&m);
        loop {
            match step {
                Step::Ask(nodes) => step = d.on_answer(&children(&t, &nodes)),
                Step::Compare(leaves) => return (leaves, d.exchanges),
            }
        }
    }

    fn keys_under(items: &[(String, Mark)], leaves: &[Node]) -> Vec<String> {
        let cover = Cover::new(leaves);
        items
            .iter()
            .filter(|(k, _)| cover.contains(k))
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn equal_copies_cost_one_exchange_and_compare_nothing() {
        let a = set(10_000);
        let (leaves, exchanges) = walk(&a, &a);
        assert_eq!((leaves, exchanges), (vec![], 1));
    }

    #[test]
    fn one_differing_instance_among_100_000_costs_a_few_exchanges_and_a_small_compare() {
        let a = set(100_000);
        let mut b = a.clone();
        b[4_242].1 = mark(2);
        let (leaves, exchanges) = walk(&a, &b);
        // log16(100,000 / 32) ≈ 2.9: three or four levels down, never all five.
        assert!(exchanges <= 4, "{exchanges} exchanges");
        let compared = keys_under(&a, &leaves);
        assert!(compared.contains(&a[4_242].0));
        assert!(
            compared.len() <= LEAF_ITEMS,
            "{} items compared",
            compared.len()
        );
    }

    #[test]
    fn every_kind_of_difference_is_found() {
        let a = set(5_000);
        let mut b = a.clone();
        let changed = b[10].0.clone();
        b[10].1 = mark(3);
        let removed = b.remove(20).0; // the replica lacks it
        b.push(("u/svc-9/extra".to_string(), mark(1))); // the owner lacks it
        let (leaves, _) = walk(&a, &b);
        let mut under_leaves = keys_under(&a, &leaves);
        under_leaves.extend(keys_under(&b, &leaves));
        for k in [changed, removed, "u/svc-9/extra".to_string()] {
            assert!(under_leaves.contains(&k), "{k} not compared");
        }
    }

    #[test]
    fn an_empty_side_compares_everything_the_other_holds() {
        let a = set(3_000);
        let (leaves, _) = walk(&[], &a);
        assert_eq!(keys_under(&a, &leaves).len(), a.len());
        let (leaves, _) = walk(&a, &[]);
        assert_eq!(keys_under(&a, &leaves).len(), a.len());
    }

    #[test]
    fn the_shape_does_not_depend_on_either_sides_size() {
        // A key's bucket depends on the key only, so its ancestors are the same nodes on both
        // sides.
        for k in ["u/a/1", "s/a", "gvip/10.0.0.1"] {
            let b = bucket(k);
            for l in 1..=DEPTH {
                let (pl, pp) = ancestor(b, l - 1);
                let (cl, cp) = ancestor(b, l);
                assert_eq!((pl + 1, pp), (cl, cp >> 4));
            }
        }
    }

    /// Two copies whose units agree and whose meta entries of one service differ (another
    /// gVip, as when a new owner assigned one after missing the first): the tree walk and
    /// the flat digest both see it.
    #[test]
    fn copies_differing_only_in_a_meta_entry_are_seen_to_differ() {
        use crate::registry::ops::range_hash;
        use crate::registry::unit::{meta_bytes, meta_key, Meta};
        let meta = |gvip: &str, wall_ms| Meta {
            gvip: Some(gvip.to_string()),
            gvip_at: Hlc {
                wall_ms,
                logical: 0,
                node: 1,
            },
            index: 9,
        };
        let entry = |service: &str, m: &Meta| {
            let key = meta_key(service);
            let mark = Mark::of(&key, &meta_bytes(m).expect("encode"));
            (key, mark)
        };
        let mut a = set(5_000);
        for i in 0..50 {
            a.push(entry(&format!("svc-{i}"), &meta("10.212.0.7", 1_000)));
        }
        let mut b = a.clone();
        let differing = b.len() - 7;
        let (key, _) = b[differing].clone();
        b[differing] = entry(&key["s/".len()..], &meta("10.212.9.9", 2_000));
        assert_ne!(range_hash(&a), range_hash(&b), "the flat digest");
        let (leaves, _) = walk(&a, &b);
        assert!(keys_under(&a, &leaves).contains(&key), "the tree walk");
        // And one copy without the meta entry at all.
        let mut c = a.clone();
        c.retain(|(k, _)| *k != key);
        assert_ne!(range_hash(&a), range_hash(&c));
        let (leaves, _) = walk(&a, &c);
        assert!(keys_under(&a, &leaves).contains(&key));
    }
}
