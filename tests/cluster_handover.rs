//! Warm hand-over on real nodes and a real etcd: a node stopped with
//! SIGTERM or SHUTDOWN sends its blocks to their new owners before it goes,
//! and the others then serve them byte for byte (chains still whole); a
//! new node takes its share of the slots with their blocks; a client
//! writing all the while sees no error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidepool_client::{chain_keys, Client, ClientOptions, PlaneChoice};
use tidepool_tests::{cluster_node, converge_on, rt, Etcd, Server};

fn block(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<_>>()
        .into()
}

/// Chains of blocks and plain keys, stored through `c`.
struct Data {
    chains: Vec<Vec<(Bytes, Bytes)>>,
    plain: Vec<(String, String)>,
}

fn fill(rt: &tokio::runtime::Runtime, c: &Client, first: &Server) -> Data {
    let mut chains = Vec::new();
    rt.block_on(async {
        for i in 0..12u32 {
            // 16 blocks of 4 tokens.
            let tokens: Vec<u32> = (0..64).map(|t| t + i * 1000).collect();
            let keys = chain_keys(b"handover", 4, &tokens);
            let blocks: Vec<(Bytes, Bytes)> = keys
                .iter()
                .enumerate()
                .map(|(j, k)| (k.clone(), block((i * 100 + j as u32) as u64, 20_000)))
                .collect();
            c.put_chain(&blocks, None).await.unwrap();
            chains.push(blocks);
        }
    });
    let plain: Vec<(String, String)> = (0..100)
        .map(|i| (format!("plain:{i}"), format!("value {i}")))
        .collect();
    for (k, v) in &plain {
        let out = first.cli(&["-c", "SET", k, v]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    Data { chains, plain }
}

/// Every block and key reads back byte for byte through `c` and `at`,
/// and every chain matches whole.
fn check(rt: &tokio::runtime::Runtime, c: &Client, at: &Server, data: &Data) {
    rt.block_on(async {
        for (i, chain) in data.chains.iter().enumerate() {
            let keys: Vec<Bytes> = chain.iter().map(|(k, _)| k.clone()).collect();
            let hit = c.match_prefix(&keys, None).await.unwrap();
            assert_eq!(hit.matched, keys.len(), "chain {i}");
            let got = c.get_many(&keys).await.unwrap();
            for (j, g) in got.iter().enumerate() {
                assert!(g.as_ref() == Some(&chain[j].1), "chain {i} block {j}");
            }
        }
    });
    for (k, v) in &data.plain {
        let out = at.cli(&["-c", "GET", k]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), v, "{k}");
    }
}

/// Puts new blocks through `c` until stopped; every put must succeed (the
/// client waits out TRYAGAIN and follows MOVED). Returns what it stored.
fn keep_writing(
    c: Arc<Client>,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(Bytes, Bytes)>> {
    std::thread::spawn(move || {
        let rt = rt();
        let mut stored = Vec::new();
        let mut i = 0u64;
        while !stop.load(Relaxed) {
            let blocks: Vec<(Bytes, Bytes)> = (0..8)
                .map(|j| {
                    let k = Bytes::from(format!("live:{i}:{j}"));
                    (k, block(i * 8 + j + 1_000_000, 2_000))
                })
                .collect();
            let answers = rt.block_on(c.put_many(&blocks, false, None)).unwrap();
            for (j, a) in answers.iter().enumerate() {
                assert!(a.is_ok(), "live put {i}:{j}: {a:?}");
            }
            stored.extend(blocks);
            i += 1;
            rounds.fetch_add(1, Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        stored
    })
}

/// The id of the node leading the cluster (its etcd election key's value).
fn leader_id(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> String {
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([&etcd.endpoint], None)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = client
                .get(
                    "/tidepool/tidepool/leader",
                    Some(etcd_client::GetOptions::new().with_prefix().with_sort(
                        etcd_client::SortTarget::Create,
                        etcd_client::SortOrder::Ascend,
                    )),
                )
                .await
                .unwrap();
            if let Some(kv) = got.kvs().first() {
                return kv.value_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn wait_exit(s: &mut Server, within: Duration) {
    let deadline = Instant::now() + within;
    while s.is_running() {
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_node_hands_its_blocks_over() {
    let etcd = Etcd::start();
    let nodes: Vec<Server> = (0..4).map(|_| cluster_node(&etcd, &[])).collect();
    converge_on(&nodes.iter().collect::<Vec<_>>(), 4);
    let rt = rt();
    let seed = format!("127.0.0.1:{}", nodes[0].port);
    let opts = ClientOptions {
        connections: 2,
        plane: PlaneChoice::Tcp,
        ..ClientOptions::default()
    };
    let c = Arc::new(
        rt.block_on(Client::connect_cluster_with(&[&seed], opts))
            .unwrap(),
    );
    let data = fill(&rt, &c, &nodes[0]);
    let mut nodes = nodes.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let (mut c3, d) = (nodes.next().unwrap(), nodes.next().unwrap());
    assert!(tidepool_tests::dbsize(&c3) > 50 && tidepool_tests::dbsize(&d) > 50);

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let writer = keep_writing(c.clone(), stop.clone(), rounds.clone());

    // SIGTERM: c3 hands over, then exits.
    let t = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &c3.pid().to_string()])
        .status();
    wait_exit(&mut c3, Duration::from_secs(30));
    eprintln!("SIGTERM hand-over took {:?}", t.elapsed());
    converge_on(&[&a, &b, &d], 3);
    check(&rt, &c, &a, &data);

    // SHUTDOWN of the leader: the same, and another node leads on.
    let leader = leader_id(&rt, &etcd);
    let mut rest = vec![a, b, d];
    let at = rest
        .iter()
        .position(|n| n.cli_text(&["CLUSTER", "MYID"]).trim() == leader)
        .expect("the leader is one of the three");
    let mut l = rest.remove(at);
    let _ = l.cli(&["SHUTDOWN"]);
    wait_exit(&mut l, Duration::from_secs(30));
    converge_on(&[&rest[0], &rest[1]], 2);
    assert_ne!(leader_id(&rt, &etcd), leader);
    check(&rt, &c, &rest[1], &data);

    let before = rounds.load(Relaxed);
    while rounds.load(Relaxed) < before + 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Relaxed);
    let live = writer.join().unwrap();
    assert!(live.len() > 50, "the writer wrote {} blocks", live.len());
    let keys: Vec<Bytes> = live.iter().map(|(k, _)| k.clone()).collect();
    let got = rt.block_on(c.get_many(&keys)).unwrap();
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.as_ref() == Some(&live[i].1),
            "live block {i} ({:?})",
            live[i].0
        );
    }
}

#[test]
fn a_new_node_takes_its_share_with_the_blocks() {
    let etcd = Etcd::start();
    let mut nodes: Vec<Server> = (0..2).map(|_| cluster_node(&etcd, &[])).collect();
    converge_on(&nodes.iter().collect::<Vec<_>>(), 2);
    let rt = rt();
    let seed = format!("127.0.0.1:{}", nodes[0].port);
    let c = rt.block_on(Client::connect_cluster(&[&seed], 2)).unwrap();
    let data = fill(&rt, &c, &nodes[0]);
    nodes.push(cluster_node(&etcd, &[]));
    converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
    let new = tidepool_tests::dbsize(&nodes[2]);
    check(&rt, &c, &nodes[2], &data);
    // About a third of the 292 blocks and keys (12 chains of 16, 100 keys).
    assert!(new > 60, "the new node holds {new} blocks");
}
