//! tidepool-client in cluster mode against three (then four) real nodes on
//! a real etcd: chains put and read back byte for byte over shm, tcp and
//! inline RESP, split by owner; one prefix match for the whole chain, its
//! lease given back through the node that gave it; a map change followed
//! (MOVED, then the map read again); the blocking client the same.

use bytes::Bytes;
use tidepool_client::{blocking, chain_keys, Client, ClientOptions, PlaneChoice};
use tidepool_tests::{cluster_node, converge_on, rt, Etcd, Server};

/// Block `i` of a chain: bytes that differ between blocks and within one.
fn block(seed: usize, i: usize, len: usize) -> Bytes {
    (0..len)
        .map(|j| (seed * 31 + i * 13 + j * 7 + j / 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn dbsize(s: &Server) -> i64 {
    redis::cmd("DBSIZE").query(&mut s.redis()).unwrap()
}

/// Puts a chain of `n` blocks of `len` bytes through `c`, reads it back
/// into buffers, and checks every byte, the match and the lease.
async fn chain_round_trip(c: &Client, seed: usize, n: usize, len: usize) {
    let tokens: Vec<u32> = (0..(n * 4) as u32)
        .map(|t| t + 1000 * seed as u32)
        .collect();
    let keys = chain_keys(format!("model-{seed}").as_bytes(), 4, &tokens);
    let blocks: Vec<(Bytes, Bytes)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), block(seed, i, len)))
        .collect();
    c.put_chain(&blocks, None).await.unwrap();
    let hit = c.match_prefix(&keys, Some(60_000)).await.unwrap();
    assert_eq!(hit.matched, n);
    let tok = c
        .match_tokens(format!("model-{seed}").as_bytes(), 4, &tokens, None)
        .await
        .unwrap();
    assert_eq!(tok.matched, n);
    let mut storage = vec![vec![0xEEu8; len]; n];
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
    let lens = c.get_many_into(&keys, &mut bufs).await.unwrap();
    assert!(lens.iter().all(|l| *l == Some(len)), "{lens:?}");
    for (i, got) in storage.iter().enumerate() {
        assert!(got[..] == blocks[i].1[..], "block {i} of chain {seed}");
    }
    assert!(c.release(hit.lease.unwrap()).await.unwrap());
    assert!(!c.release(hit.lease.unwrap()).await.unwrap());
    let exists = c.exists(&keys).await.unwrap();
    assert!(
        exists.iter().all(|t| t.as_deref() == Some("dram")),
        "{exists:?}"
    );
    let got = c.get_many(&keys[..3]).await.unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_ref(), Some(&blocks[i].1));
    }
    assert_eq!(
        c.get(keys[n - 1].clone()).await.unwrap(),
        Some(blocks[n - 1].1.clone())
    );
}

#[test]
fn chains_over_every_plane_split_by_owner() {
    let etcd = Etcd::start();
    let nodes: Vec<Server> = (0..3).map(|_| cluster_node(&etcd, &[])).collect();
    converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
    let seed = format!("127.0.0.1:{}", nodes[1].port);
    rt().block_on(async {
        for (i, (plane, want)) in [
            (PlaneChoice::Auto, Some("shm")),
            (PlaneChoice::Tcp, Some("tcp")),
            (PlaneChoice::Inline, None),
        ]
        .into_iter()
        .enumerate()
        {
            let opts = ClientOptions {
                connections: 2,
                plane,
                ..ClientOptions::default()
            };
            let c = Client::connect_cluster_with(&[&seed], opts).await.unwrap();
            let listed = c.cluster_nodes();
            assert_eq!(listed.len(), 3, "{listed:?}");
            assert!(listed.iter().all(|(_, p)| *p == want), "{listed:?}");
            chain_round_trip(&c, i, 48, 70_000).await;
        }
        // Every node holds part of the chains.
        for n in &nodes {
            assert!(dbsize(n) > 10, "node {} holds {}", n.port, dbsize(n));
        }
        // A lease over the three nodes: one id, a part on each, all given
        // back by one release (and by nobody twice).
        let leases = || -> i64 {
            nodes
                .iter()
                .map(|n| {
                    let v: redis::Value = redis::cmd("KV.STATS").query(&mut n.redis()).unwrap();
                    let redis::Value::Array(kv) = v else {
                        panic!("{v:?}")
                    };
                    let at = kv
                        .iter()
                        .position(|x| *x == redis::Value::BulkString(b"leases".to_vec()))
                        .unwrap();
                    let redis::Value::Int(n) = kv[at + 1] else {
                        panic!()
                    };
                    n
                })
                .sum()
        };
        let c = Client::connect_cluster(&[&seed], 2).await.unwrap();
        let tokens: Vec<u32> = (0..48 * 4).collect();
        let keys = chain_keys(b"model-0", 4, &tokens);
        let hit = c.match_prefix(&keys, Some(60_000)).await.unwrap();
        assert_eq!(hit.matched, 48);
        assert_eq!(leases(), 3);
        assert!(c.release(hit.lease.unwrap()).await.unwrap());
        assert_eq!(leases(), 0);
        assert!(!c.release(hit.lease.unwrap()).await.unwrap());
        // Small blocks, not chained, inline: split by owner, deleted too.
        let c = Client::connect_cluster(&[&seed], 2).await.unwrap();
        let blocks: Vec<(Bytes, Bytes)> = (0..60)
            .map(|i| (Bytes::from(format!("small:{i}")), block(9, i, 100)))
            .collect();
        let answers = c.put_many(&blocks, false, None).await.unwrap();
        assert!(answers.iter().all(|r| r.is_ok()), "{answers:?}");
        let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(c.delete(&keys[..20]).await.unwrap(), 20);
        let left = c.exists(&keys).await.unwrap();
        assert!(left[..20].iter().all(Option::is_none));
        assert!(left[20..].iter().all(Option::is_some));
    });
}

#[test]
fn a_new_node_moves_slots_and_the_client_follows() {
    let etcd = Etcd::start();
    let mut nodes: Vec<Server> = (0..3).map(|_| cluster_node(&etcd, &[])).collect();
    converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
    let seed = format!("127.0.0.1:{}", nodes[0].port);
    let rt = rt();
    let c = rt.block_on(Client::connect_cluster(&[&seed], 2)).unwrap();
    nodes.push(cluster_node(&etcd, &[]));
    converge_on(&nodes.iter().collect::<Vec<_>>(), 4);
    // The client still holds the map of three: its puts to slots that
    // moved answer MOVED, it reads the map again and sends them on.
    rt.block_on(chain_round_trip(&c, 7, 64, 70_000));
    assert_eq!(c.cluster_nodes().len(), 4);
    assert!(dbsize(&nodes[3]) > 0, "the new node got blocks");
}

#[test]
fn the_blocking_client_in_cluster_mode() {
    let etcd = Etcd::start();
    let nodes: Vec<Server> = (0..3).map(|_| cluster_node(&etcd, &[])).collect();
    converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
    let seeds = [
        "127.0.0.1:1".to_string(), // nobody there: the next seed is tried
        format!("127.0.0.1:{}", nodes[2].port),
    ];
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let c = blocking::Client::connect_cluster(&seeds, 2).unwrap();
    assert_eq!(c.cluster_nodes().len(), 3);
    let keys = chain_keys(b"blocking", 2, &(0..64).collect::<Vec<u32>>());
    let blocks: Vec<(Bytes, Bytes)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), block(3, i, 1 << 16)))
        .collect();
    c.put_chain(&blocks, None).unwrap();
    assert_eq!(c.match_prefix(&keys, None).unwrap().matched, 32);
    let got = c.get_many(&keys).unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_ref(), Some(&blocks[i].1), "block {i}");
    }
    // A single node (not in cluster mode) is a cluster of one.
    let alone = Server::start(&[]);
    let c = blocking::Client::connect_cluster(&[&format!("127.0.0.1:{}", alone.port)], 1).unwrap();
    assert_eq!(c.cluster_nodes().len(), 1);
    c.put_chain(&blocks[..4], None).unwrap();
    assert_eq!(c.match_prefix(&keys, None).unwrap().matched, 4);
}
