//! tidepool's cluster mode. So far: Redis Cluster's slots ([`slots`]): the
//! slot of a key, and the assignment of the 16384 slots to nodes, weighted
//! by their DRAM capacity and moving as few slots as it can when nodes join
//! or leave. Membership on etcd, redirection and the cluster-wide KV
//! commands build on it.

pub mod slots;

pub use slots::{key_slot, Member, SlotMap, SLOTS};
