//! Membership on a real etcd (Debian's etcd-server, started here on free
//! loopback ports in a temp dir): nodes register under leases, the elected
//! leader writes a slot map that every node sees, a node that leaves or
//! stops renewing its lease has its slots given to the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_cluster::{Membership, NodeInfo, Settings, View, SLOTS};
use tidepool_tests::Etcd;

fn settings(etcd: &Etcd, n: u32, weight: u64) -> Settings {
    Settings {
        endpoints: vec![etcd.endpoint.clone()],
        cluster: "test".into(),
        me: NodeInfo {
            id: format!("{n:040x}"),
            addr: format!("127.0.0.1:{}", 7000 + n),
            weight,
            leaving: false,
        },
        lease_ttl: 2,
    }
}

/// Joins, and hands over at once whenever a pending map asks (a node with
/// no blocks; the server sends its blocks first, see tests/cluster_handover.rs).
async fn join(s: Settings) -> Arc<Membership> {
    let m = Arc::new(Membership::join(s).await.unwrap());
    let weak = Arc::downgrade(&m);
    let mut views = m.subscribe();
    tokio::spawn(async move {
        let mut done = 0;
        while views.changed().await.is_ok() {
            let pending = views.borrow_and_update().pending.clone();
            let Some(m) = weak.upgrade() else { return };
            if let Some(p) = pending.filter(|p| p.epoch > done) {
                done = p.epoch;
                let _ = m.handed_over(p.epoch).await;
            }
        }
    });
    m
}

/// Waits until `pred` holds for the view of every node in `nodes`.
async fn converge(nodes: &[&Membership], what: &str, pred: impl Fn(&View) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|m| pred(&m.view())) {
        assert!(
            Instant::now() < deadline,
            "{what}: views {:?}",
            nodes
                .iter()
                .map(|m| m.view().map.counts().len())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn owners(v: &View) -> Vec<(String, usize)> {
    v.map
        .counts()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect()
}

#[test]
fn nodes_share_the_slots_and_take_over_from_one_that_leaves_or_dies() {
    let etcd = Etcd::start();
    let rt = tidepool_tests::rt();
    rt.block_on(async {
        // Weights 2:1:1: slots 8192, 4096, 4096.
        let a = join(settings(&etcd, 1, 2 << 30)).await;
        let b = join(settings(&etcd, 2, 1 << 30)).await;
        let c = join(settings(&etcd, 3, 1 << 30)).await;
        let (a, b, c) = (&*a, b, c);
        converge(&[a, &b, &c], "three nodes", |v| {
            v.nodes.len() == 3 && v.map.counts().len() == 3
        })
        .await;
        let v = a.view();
        assert!(v.registered);
        let counts: Vec<usize> = owners(&v).iter().map(|o| o.1).collect();
        assert_eq!(counts, [8192, 4096, 4096]);
        assert_eq!(counts.iter().sum::<usize>(), SLOTS);
        assert_eq!(v.nodes[&format!("{:040x}", 2)].addr, "127.0.0.1:7002");
        let epoch = v.map.epoch;
        // Every node sees the same map.
        assert_eq!(b.view().map, v.map);
        assert_eq!(c.view().map, v.map);

        // c leaves on purpose: its slots go to a and b, nothing else moves.
        let before = a.view().map.clone();
        let c = Arc::try_unwrap(c).ok().expect("only the test holds it");
        c.leave().await.unwrap();
        converge(&[a, &b], "c left", |v| v.map.counts().len() == 2).await;
        let after = a.view().map.clone();
        assert!(after.epoch > epoch);
        assert_eq!(after.moved_from(&before), 4096, "only c's slots moved");
        let counts: Vec<usize> = owners(&a.view()).iter().map(|o| o.1).collect();
        assert_eq!(counts, [10923, 5461]);

        // b dies (its tasks stop, its lease is not revoked): within the
        // TTL (2 s) plus 5 s, a owns every slot.
        let t = Instant::now();
        drop(b);
        converge(&[a], "b's lease expired", |v| {
            v.map.counts().len() == 1 && v.nodes.len() == 1
        })
        .await;
        assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
        assert_eq!(owners(&a.view())[0].1, SLOTS);

        // A node that comes back joins again cleanly.
        let b = join(settings(&etcd, 2, 1 << 30)).await;
        converge(&[a, &b], "b back", |v| v.map.counts().len() == 2).await;
    });
}

/// A node whose lease etcd expired (revoked here, as etcd does to a node
/// cut off past its TTL) says so (its view is not registered: the server
/// answers -CLUSTERDOWN meanwhile) and registers again under a new lease.
#[test]
fn a_node_whose_lease_expired_registers_again() {
    let etcd = Etcd::start();
    let rt = tidepool_tests::rt();
    rt.block_on(async {
        let a = Membership::join(settings(&etcd, 1, 1 << 30)).await.unwrap();
        converge(&[&a], "one node", |v| v.map.counts().len() == 1).await;
        let mut views = a.subscribe();
        let mut etcd_client = etcd_client::Client::connect([&etcd.endpoint], None)
            .await
            .unwrap();
        let key = format!("/tidepool/test/nodes/{:040x}", 1);
        let lease_of = |got: etcd_client::GetResponse| got.kvs().first().map(|kv| kv.lease());
        let first = lease_of(etcd_client.get(key.as_str(), None).await.unwrap()).unwrap();
        etcd_client.lease_revoke(first).await.unwrap();
        // The view says it lost its registration ...
        let deadline = Instant::now() + Duration::from_secs(10);
        while views.borrow_and_update().registered {
            assert!(Instant::now() < deadline, "the lost lease went unnoticed");
            let _ = tokio::time::timeout(Duration::from_millis(200), views.changed()).await;
        }
        // ... then holds a new one.
        converge(&[&a], "registered again", |v| v.registered).await;
        let again = lease_of(etcd_client.get(key.as_str(), None).await.unwrap());
        assert!(again.is_some_and(|l| l != first), "{again:?} after {first}");
        converge(&[&a], "serving again", |v| {
            v.registered && v.map.counts().len() == 1
        })
        .await;
    });
}
