//! Redis Cluster's key space: 16384 slots, a key's slot the CRC16 (XMODEM)
//! of the key or of its `{hash tag}`; and the assignment of slots to nodes,
//! weighted by each node's DRAM capacity and moving as few slots as it can
//! when nodes come and go.

use std::collections::BTreeMap;

/// Slots in the key space, as Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot of `key`: CRC16 (XMODEM) of the key, or of the part between its
/// first `{` and the next `}` when that part is not empty, modulo 16384 (as
/// Redis Cluster and every cluster client compute it).
pub fn key_slot(key: &[u8]) -> u16 {
    tidepool_protocol::slot::key_slot(key)
}

/// A node that takes slots: its id, and its weight (its DRAM capacity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Cluster-wide id (Redis's 40-hex node id).
    pub id: String,
    /// Relative share of the slots it should own.
    pub weight: u64,
}

/// Which node owns each slot, and the epoch of the assignment.
///
/// Owners are kept once each, and each slot names its owner by index: a
/// cluster-wide match looks up the owner of every key of a chain on its
/// path, and a table of 16,384 two-byte indices stays in cache where one
/// string per slot did not.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// Grows with every new assignment; nodes apply only newer ones.
    pub epoch: u64,
    /// The owners' member ids, each once.
    names: Vec<String>,
    /// Each slot's owner, an index into `names` ([`NOBODY`]: unowned).
    slots: Vec<u16>,
}

/// A slot's owner index when nobody owns it.
pub const NOBODY: u16 = u16::MAX;

impl PartialEq for SlotMap {
    fn eq(&self, other: &SlotMap) -> bool {
        self.epoch == other.epoch && self.same_owners(other)
    }
}

impl Eq for SlotMap {}

impl SlotMap {
    /// A map with no slot owned, at epoch 0.
    pub fn empty() -> SlotMap {
        SlotMap {
            epoch: 0,
            names: Vec::new(),
            slots: vec![NOBODY; SLOTS],
        }
    }

    /// A map giving each slot the owner at its place in `owners` (empty:
    /// unowned).
    fn from_owners(epoch: u64, owners: &[String]) -> SlotMap {
        let mut m = SlotMap {
            epoch,
            ..SlotMap::empty()
        };
        for (slot, owner) in owners.iter().enumerate().take(SLOTS) {
            if !owner.is_empty() {
                m.slots[slot] = m.intern(owner);
            }
        }
        m
    }

    fn intern(&mut self, owner: &str) -> u16 {
        match self.names.iter().position(|n| n == owner) {
            Some(i) => i as u16,
            None => {
                self.names.push(owner.to_string());
                (self.names.len() - 1) as u16
            }
        }
    }

    /// A map from its ranges (as [`SlotMap::ranges`] gives them); slots in
    /// no range are unowned, a range past the last slot is cut.
    pub fn from_ranges(epoch: u64, ranges: &[(u16, u16, String)]) -> SlotMap {
        let mut m = SlotMap {
            epoch,
            ..SlotMap::empty()
        };
        for (first, last, owner) in ranges {
            if owner.is_empty() {
                continue;
            }
            let i = m.intern(owner);
            for slot in *first as usize..=(*last as usize).min(SLOTS - 1) {
                m.slots[slot] = i;
            }
        }
        m
    }

    /// Whether `other` gives every slot the same owner.
    pub fn same_owners(&self, other: &SlotMap) -> bool {
        (0..SLOTS as u16).all(|s| self.owner(s) == other.owner(s))
    }

    /// The owner of `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        self.owner_index(slot)
            .map(|i| self.names[i as usize].as_str())
    }

    /// The owner of `slot` as an index ([`name`](Self::name) gives its
    /// id), if any: cheaper to compare than ids.
    pub fn owner_index(&self, slot: u16) -> Option<u16> {
        self.slots
            .get(slot as usize)
            .copied()
            .filter(|&i| i != NOBODY)
    }

    /// The index of member `id` in this map, if it owns a slot.
    pub fn index_of(&self, id: &str) -> Option<u16> {
        self.names.iter().position(|n| n == id).map(|i| i as u16)
    }

    /// The member id of owner index `i`.
    pub fn name(&self, i: u16) -> &str {
        &self.names[i as usize]
    }

    /// Slots owned per member id.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut c = BTreeMap::new();
        for &i in self.slots.iter().filter(|&&i| i != NOBODY) {
            *c.entry(self.name(i)).or_insert(0) += 1;
        }
        c
    }

    /// Contiguous ranges of slots with one owner: (first, last, owner), in
    /// slot order (CLUSTER SLOTS and SHARDS list them so).
    pub fn ranges(&self) -> Vec<(u16, u16, &str)> {
        let mut out: Vec<(u16, u16, &str)> = Vec::new();
        for slot in 0..SLOTS as u16 {
            let Some(o) = self.owner(slot) else {
                continue;
            };
            match out.last_mut() {
                Some((_, last, owner)) if *owner == o && *last + 1 == slot => *last = slot,
                _ => out.push((slot, slot, o)),
            }
        }
        out
    }

    /// How many slots have another owner in `other`.
    pub fn moved_from(&self, other: &SlotMap) -> usize {
        (0..SLOTS as u16)
            .filter(|&s| self.owner(s) != other.owner(s))
            .count()
    }

    /// The assignment for `members` that moves as few slots from `self` as
    /// it can, at the next epoch.
    ///
    /// Each member's target is its weight's share of the slots (largest
    /// remainders break the rounding, ties by id, so every node computes the
    /// same map). Slots of departed members, and slots above a member's
    /// target, are given to members below theirs; every other slot stays
    /// where it is. So a member joining takes only the slots it is due, and
    /// a member leaving gives up only its own.
    pub fn reassign(&self, members: &[Member]) -> SlotMap {
        let epoch = self.epoch + 1;
        let mut members: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        if members.is_empty() {
            return SlotMap {
                epoch,
                ..SlotMap::empty()
            };
        }
        let targets = targets(&members);
        // Keep each member's slots up to its target (lowest slots first);
        // everything else is free.
        let mut owners = vec![String::new(); SLOTS];
        let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
        let mut free: Vec<usize> = Vec::new();
        for (slot, owner) in owners.iter_mut().enumerate() {
            let was = self.owner(slot as u16).unwrap_or("");
            let target = targets.get(was).copied().unwrap_or(0);
            let have = kept.entry(was).or_insert(0);
            if !was.is_empty() && *have < target {
                *have += 1;
                *owner = was.to_string();
            } else {
                free.push(slot);
            }
        }
        // Hand the free slots out in slot order, member by member in id
        // order, so that each new owner gets contiguous runs where it can.
        let mut free = free.into_iter();
        for m in &members {
            let have = kept.get(m.id.as_str()).copied().unwrap_or(0);
            for _ in have..targets[m.id.as_str()] {
                let slot = free.next().expect("targets sum to the slots");
                owners[slot] = m.id.clone();
            }
        }
        debug_assert!(free.next().is_none(), "every slot has an owner");
        SlotMap::from_owners(epoch, &owners)
    }
}

/// Each member's share of the slots, by weight: floors, then one more slot
/// each for the largest remainders (ties to the lower id).
fn targets<'a>(members: &[&'a Member]) -> BTreeMap<&'a str, usize> {
    let total: u128 = members.iter().map(|m| m.weight as u128).sum();
    let mut out: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rest: Vec<(u128, &str)> = Vec::new();
    let mut given = 0usize;
    for m in members {
        let exact = m.weight as u128 * SLOTS as u128;
        let floor = (exact / total) as usize;
        out.insert(m.id.as_str(), floor);
        given += floor;
        rest.push((exact % total, m.id.as_str()));
    }
    // Largest remainder first; for equal ones, the lower id.
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (_, id) in rest.into_iter().take(SLOTS - given) {
        *out.get_mut(id).expect("a member") += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, weight: u64) -> Member {
        Member {
            id: id.to_string(),
            weight,
        }
    }

    #[test]
    fn one_node_owns_everything_in_one_range() {
        let m = SlotMap::empty().reassign(&[member("a", 1)]);
        assert_eq!(m.epoch, 1);
        assert_eq!(m.ranges(), [(0, 16383, "a")]);
    }

    #[test]
    fn weights_set_the_shares() {
        let m = SlotMap::empty().reassign(&[member("a", 64), member("b", 32), member("c", 32)]);
        let c = m.counts();
        assert_eq!((c["a"], c["b"], c["c"]), (8192, 4096, 4096));
        // Three equal nodes: 5462, 5461, 5461 (the extra to the lowest id).
        let m = SlotMap::empty().reassign(&[member("x", 1), member("y", 1), member("z", 1)]);
        let c = m.counts();
        assert_eq!((c["x"], c["y"], c["z"]), (5462, 5461, 5461));
        assert_eq!(m.ranges().len(), 3, "contiguous from empty");
    }

    #[test]
    fn a_joining_node_takes_only_its_share_and_a_leaving_one_gives_only_its_own() {
        let three = SlotMap::empty().reassign(&[member("a", 1), member("b", 1), member("c", 1)]);
        let four = three.reassign(&[
            member("a", 1),
            member("b", 1),
            member("c", 1),
            member("d", 1),
        ]);
        assert_eq!(four.counts()["d"], 4096);
        assert_eq!(four.moved_from(&three), 4096, "only d's slots moved");
        let back = four.reassign(&[member("a", 1), member("b", 1), member("c", 1)]);
        assert_eq!(back.moved_from(&four), 4096, "only d's slots moved back");
        assert!(back.counts().values().all(|n| (5461..=5462).contains(n)));
    }

    #[test]
    fn no_members_no_owners() {
        let m = SlotMap::empty().reassign(&[member("a", 1)]);
        let none = m.reassign(&[]);
        assert!(none.ranges().is_empty());
        assert_eq!(none.epoch, 2);
    }

    proptest! {
        /// Any membership change: every slot owned by a member, shares
        /// within one slot of the weights, the same map whatever the order
        /// the members come in, and no slot moved that did not have to.
        #[test]
        fn reassignment_is_complete_proportional_deterministic_and_minimal(
            before in proptest::collection::btree_map("[a-f]", 1u64..8, 1..6),
            after in proptest::collection::btree_map("[a-f]", 1u64..8, 1..6),
        ) {
            let to_members = |m: &BTreeMap<String, u64>| -> Vec<Member> {
                m.iter().map(|(id, w)| member(id, *w)).collect()
            };
            let old = SlotMap::empty().reassign(&to_members(&before));
            let members = to_members(&after);
            let new = old.reassign(&members);
            let mut reversed = members.clone();
            reversed.reverse();
            prop_assert_eq!(&new, &old.reassign(&reversed));
            let counts = new.counts();
            prop_assert_eq!(counts.values().sum::<usize>(), SLOTS);
            let total: u64 = after.values().sum();
            for (id, w) in &after {
                let exact = *w as f64 * SLOTS as f64 / total as f64;
                let got = counts.get(id.as_str()).copied().unwrap_or(0) as f64;
                prop_assert!((got - exact).abs() < 1.0, "{} got {} of {}", id, got, exact);
            }
            // Minimal: a slot moves only if its old owner left or was over
            // its new share; the number moved is what the shares force.
            let forced: usize = old
                .counts()
                .iter()
                .map(|(id, n)| n.saturating_sub(counts.get(id).copied().unwrap_or(0)))
                .sum();
            prop_assert_eq!(new.moved_from(&old), forced);
        }
    }
}
