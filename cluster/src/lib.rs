//! tidepool's cluster mode: Redis Cluster's slots ([`slots`]): the slot of
//! a key, and the assignment of the 16384 slots to nodes, weighted by their
//! DRAM capacity and moving as few slots as it can when nodes join or
//! leave; and membership on etcd ([`membership`]): registration under a
//! lease, an elected leader writing the map (through a pending map while
//! blocks are handed over), every node watching it. The server builds
//! redirection, the cluster-wide KV commands and the hand-over on these.

pub mod membership;
pub mod slots;

pub use membership::{Membership, NodeInfo, Settings, View};
pub use slots::{key_slot, Member, SlotMap, SLOTS};
