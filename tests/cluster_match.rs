//! Cluster-wide prefix questions: KV.MATCH (with and without LEASE,
//! WITHTIERS and WITHNODES), KV.MATCHTOKENS and KV.EXISTS asked of any node
//! of three answer what one node holding the same blocks answers, for
//! random chains with random holes; a lease over several nodes holds
//! exactly the matched blocks' nodes and is given back everywhere by one
//! KV.RELEASE.

use std::time::{Duration, Instant};

use redis::Value;
use tidepool_cluster::key_slot;
use tidepool_tests::{cluster_node, converge_on, slot_owners, Etcd, Server};

/// xorshift64*: a reproducible stream of random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The three nodes, a connection to each, and who owns each slot.
struct Fleet {
    nodes: Vec<Server>,
    cons: Vec<redis::Connection>,
    owners: Vec<String>,
}

impl Fleet {
    fn start(etcd: &Etcd) -> Fleet {
        let nodes: Vec<Server> = (0..3).map(|_| cluster_node(etcd, &[])).collect();
        converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
        let owners = slot_owners(&nodes[0]);
        let cons = nodes.iter().map(|n| n.redis()).collect();
        Fleet {
            nodes,
            cons,
            owners,
        }
    }

    fn owner(&self, key: &[u8]) -> &str {
        &self.owners[key_slot(key) as usize]
    }

    /// The connection to the node that owns `key`.
    fn con_of(&mut self, key: &[u8]) -> &mut redis::Connection {
        let addr = self.owner(key).to_string();
        let i = self
            .nodes
            .iter()
            .position(|n| addr == format!("127.0.0.1:{}", n.port))
            .unwrap_or_else(|| panic!("no node at {addr}"));
        &mut self.cons[i]
    }

    /// Live leases over all nodes.
    fn leases(&mut self) -> i64 {
        self.cons.iter_mut().map(leases).sum()
    }
}

fn leases(con: &mut redis::Connection) -> i64 {
    let stats: Value = redis::cmd("KV.STATS").query(con).unwrap();
    field(&stats, "leases")
        .and_then(int)
        .expect("KV.STATS leases")
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| kv[0] == Value::BulkString(name.as_bytes().to_vec()))
            .map(|kv| &kv[1]),
        Value::Map(items) => items
            .iter()
            .find(|(k, _)| *k == Value::BulkString(name.as_bytes().to_vec()))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn texts(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Waits (up to 5 s) until `f` gives `want`.
fn eventually(what: &str, want: i64, mut f: impl FnMut() -> i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = f();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got}, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put(con: &mut redis::Connection, key: &[u8], value: &[u8]) {
    let _: () = redis::cmd("KV.PUT")
        .arg(key)
        .arg(value)
        .query(con)
        .unwrap_or_else(|e| panic!("KV.PUT {}: {e}", String::from_utf8_lossy(key)));
}

#[test]
fn cluster_wide_matches_equal_one_nodes_answers() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd);
    let single = Server::start(&["--dram", "64MiB"]);
    let mut one = single.redis();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // Random chains, each key stored with the chain's own probability (all
    // of them, most, or half): prefixes of every length, holes after them.
    let mut chains: Vec<Vec<Vec<u8>>> = Vec::new();
    for c in 0..80 {
        let len = 1 + rng.below(48) as usize;
        let keep = [100, 100, 90, 50][rng.below(4) as usize];
        let chain: Vec<Vec<u8>> = (0..len)
            .map(|i| format!("chain{c}:{i}:{:x}", rng.next()).into_bytes())
            .collect();
        for k in &chain {
            if rng.below(100) < keep {
                let value = format!("v{}", rng.next()).into_bytes();
                put(fleet.con_of(k), k, &value);
                put(&mut one, k, &value);
            }
        }
        chains.push(chain);
    }

    let mut spread_leases = 0;
    for (c, chain) in chains.iter().enumerate() {
        let at = c % 3;
        let lease = rng.below(2) == 0;
        let tiers = rng.below(2) == 0;
        let nodes = rng.below(2) == 0;
        let ask = |con: &mut redis::Connection| -> Value {
            let mut cmd = redis::cmd("KV.MATCH");
            cmd.arg(chain.len());
            for k in chain {
                cmd.arg(k);
            }
            if lease {
                cmd.arg("LEASE").arg(60_000);
            }
            if tiers {
                cmd.arg("WITHTIERS");
            }
            if nodes {
                cmd.arg("WITHNODES");
            }
            cmd.query(con).unwrap()
        };
        let want = ask(&mut one);
        let got = ask(&mut fleet.cons[at]);
        let matched = |v: &Value| int(v).or_else(|| field(v, "matched").and_then(int));
        let m = matched(&want).unwrap() as usize;
        assert_eq!(
            matched(&got),
            Some(m as i64),
            "chain {c}: {got:?} vs {want:?}"
        );
        if !(lease || tiers || nodes) {
            assert_eq!(got, Value::Int(m as i64));
            continue;
        }
        if tiers {
            assert_eq!(texts(field(&got, "tiers")), texts(field(&want, "tiers")));
        }
        if nodes {
            let owners: Vec<String> = chain[..m]
                .iter()
                .map(|k| fleet.owner(k).to_string())
                .collect();
            assert_eq!(texts(field(&got, "nodes")), owners, "chain {c}");
            let here = format!("127.0.0.1:{}", single.port);
            assert!(texts(field(&want, "nodes")).iter().all(|n| *n == here));
        }
        if lease {
            let id = field(&got, "lease").expect("a lease field");
            assert_eq!(
                *id == Value::Nil,
                field(&want, "lease") == Some(&Value::Nil),
                "chain {c}: {got:?} vs {want:?}"
            );
            let Value::Int(id) = *id else { continue };
            // Each node holding part of the prefix holds one lease; any
            // other node's part was trimmed away.
            let mut holders: Vec<&str> = chain[..m].iter().map(|k| fleet.owner(k)).collect();
            holders.sort();
            holders.dedup();
            spread_leases += (holders.len() > 1) as usize;
            let n = holders.len() as i64;
            eventually(&format!("chain {c}'s leases"), n, || fleet.leases());
            let released: i64 = redis::cmd("KV.RELEASE")
                .arg(id)
                .query(&mut fleet.cons[at])
                .unwrap();
            assert_eq!(released, 1);
            eventually(&format!("chain {c}'s leases released"), 0, || {
                fleet.leases()
            });
            let Value::Int(id) = field(&want, "lease").unwrap() else {
                unreachable!()
            };
            let _: i64 = redis::cmd("KV.RELEASE").arg(*id).query(&mut one).unwrap();
        }
    }
    assert!(
        spread_leases > 3,
        "few leases spanned nodes: {spread_leases}"
    );

    // KV.EXISTS over keys of every chain, asked of each node.
    let keys: Vec<&Vec<u8>> = chains.iter().flatten().step_by(3).collect();
    let ask = |con: &mut redis::Connection| -> Value {
        let mut cmd = redis::cmd("KV.EXISTS");
        for k in &keys {
            cmd.arg(&k[..]);
        }
        cmd.query(con).unwrap()
    };
    let want = ask(&mut one);
    for con in &mut fleet.cons {
        assert_eq!(ask(con), want);
    }
}

#[test]
fn matchtokens_and_leases_spread_over_nodes() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd);
    // A 64-block chain from token ids, every block stored at its owner.
    let tokens: Vec<u32> = (0..64 * 4).collect();
    let keys = tidepool_client::chain_keys(b"model", 4, &tokens);
    for k in &keys[..40] {
        put(fleet.con_of(k), k, b"block");
    }
    let mut cmd = redis::cmd("KV.MATCHTOKENS");
    cmd.arg("model").arg(4);
    for t in &tokens {
        cmd.arg(*t);
    }
    cmd.arg("LEASE").arg(60_000).arg("WITHNODES");
    let lease_of = |got: &Value| match field(got, "lease") {
        Some(Value::Int(id)) => *id,
        _ => panic!("{got:?}"),
    };
    for i in 0..3 {
        let got: Value = cmd.query(&mut fleet.cons[i]).unwrap();
        assert_eq!(field(&got, "matched"), Some(&Value::Int(40)), "{got:?}");
        assert_eq!(texts(field(&got, "nodes")).len(), 40);
        let id = lease_of(&got);
        // 40 random keys: every node holds part of the prefix.
        eventually("three parts", 3, || fleet.leases());
        // A connection's spread leases end with it, on every node.
        let mut con = fleet.nodes[i].redis();
        let got: Value = cmd.query(&mut con).unwrap();
        assert_eq!(field(&got, "matched"), Some(&Value::Int(40)), "{got:?}");
        lease_of(&got);
        eventually("six parts", 6, || fleet.leases());
        drop(con);
        eventually("the closed connection's parts gone", 3, || fleet.leases());
        // Only the node that gave the lease knows it.
        let elsewhere: i64 = redis::cmd("KV.RELEASE")
            .arg(id)
            .query(&mut fleet.cons[(i + 1) % 3])
            .unwrap();
        assert_eq!(elsewhere, 0);
        assert_eq!(fleet.leases(), 3);
        let released: i64 = redis::cmd("KV.RELEASE")
            .arg(id)
            .query(&mut fleet.cons[i])
            .unwrap();
        assert_eq!(released, 1);
        eventually("all given back", 0, || fleet.leases());
    }
}

/// A put whose parent lives on another node is stored (the parent taken on
/// trust, the block a root of its node's chains) through `redis-cli -c`;
/// a KV write over keys of one node in several slots is served there, one
/// over several nodes' keys is refused with CROSSSLOT.
#[test]
fn parents_on_other_nodes_are_taken_on_trust() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd);
    let a = &fleet.nodes[0];
    let chain: Vec<String> = (0..12).map(|i| format!("trust:{i}")).collect();
    let owners: Vec<&str> = chain.iter().map(|k| fleet.owner(k.as_bytes())).collect();
    assert!(
        owners.windows(2).any(|w| w[0] != w[1]),
        "the chain spans nodes: {owners:?}"
    );
    for (i, k) in chain.iter().enumerate() {
        let mut args = vec!["-c", "KV.PUT", k, "v"];
        if i > 0 {
            args.extend(["PARENT", &chain[i - 1]]);
        }
        assert_eq!(a.cli_text(&args).trim(), "OK", "{k}");
    }
    let mut args = vec!["KV.MATCH".to_string(), chain.len().to_string()];
    args.extend(chain.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for n in &fleet.nodes {
        assert_eq!(n.cli_text(&args).trim(), "12");
    }
    // A parent in a slot the node owns must still be stored.
    let mine = (0..)
        .map(|i| format!("own:{i}"))
        .find(|k| fleet.owner(k.as_bytes()) == format!("127.0.0.1:{}", a.port))
        .unwrap();
    let child = (0..)
        .map(|i| format!("child:{i}"))
        .find(|k| fleet.owner(k.as_bytes()) == format!("127.0.0.1:{}", a.port))
        .unwrap();
    let out = a.cli_text(&["KV.PUT", &child, "v", "PARENT", &mine]);
    assert!(out.starts_with("NOPARENT"), "{out}");

    // KV.MPUT over two keys of node a in different slots: served.
    let a_keys: Vec<String> = (0..)
        .map(|i| format!("mput:{i}"))
        .filter(|k| fleet.owner(k.as_bytes()) == format!("127.0.0.1:{}", a.port))
        .take(2)
        .collect();
    assert_ne!(
        key_slot(a_keys[0].as_bytes()),
        key_slot(a_keys[1].as_bytes())
    );
    let other = chain
        .iter()
        .find(|k| fleet.owner(k.as_bytes()) != format!("127.0.0.1:{}", a.port))
        .unwrap();
    let got: Vec<Value> = redis::cmd("KV.MPUT")
        .arg(2)
        .arg(&a_keys[0])
        .arg("x")
        .arg(&a_keys[1])
        .arg("y")
        .arg("CHAIN")
        .arg("PARENT")
        .arg(other)
        .query(&mut fleet.cons[0])
        .unwrap();
    assert_eq!(got, vec![Value::Okay, Value::Okay]);
    // The chain inside the request is linked here: deleting its head takes
    // its tail.
    let n: i64 = redis::cmd("KV.DEL")
        .arg(&a_keys[0])
        .query(&mut fleet.cons[0])
        .unwrap();
    assert_eq!(n, 1);
    let gone: Value = redis::cmd("KV.EXISTS")
        .arg(&a_keys[1])
        .query(&mut fleet.cons[0])
        .unwrap();
    assert_eq!(gone, Value::Array(vec![Value::Nil]));
    // Over two nodes' keys: CROSSSLOT.
    let e = redis::cmd("KV.MPUT")
        .arg(2)
        .arg(&a_keys[0])
        .arg("x")
        .arg(other)
        .arg("y")
        .query::<Value>(&mut fleet.cons[0])
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
}

/// A chain far longer than a request's usual size (its local part matched
/// off the runtime's worker, its peers' parts thousands of keys each).
#[test]
fn a_long_chain_is_matched_across_nodes() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd);
    let seed = format!("127.0.0.1:{}", fleet.nodes[0].port);
    let keys = tidepool_client::chain_keys(b"long", 1, &(0..20_000).collect::<Vec<u32>>());
    let rt = tidepool_tests::rt();
    rt.block_on(async {
        let c = tidepool_client::Client::connect_cluster(&[&seed], 2)
            .await
            .unwrap();
        let blocks: Vec<(bytes::Bytes, bytes::Bytes)> = keys[..15_000]
            .iter()
            .map(|k| (k.clone(), bytes::Bytes::from_static(b"v")))
            .collect();
        for r in c.put_many(&blocks, false, None).await.unwrap() {
            r.unwrap();
        }
    });
    let mut cmd = redis::cmd("KV.MATCH");
    cmd.arg(keys.len());
    for k in &keys {
        cmd.arg(&k[..]);
    }
    cmd.arg("LEASE").arg(60_000);
    let mut con = fleet.nodes[1].redis();
    let got: Value = cmd.query(&mut con).unwrap();
    assert_eq!(field(&got, "matched"), Some(&Value::Int(15_000)), "{got:?}");
    let Some(Value::Int(id)) = field(&got, "lease").cloned() else {
        panic!("{got:?}")
    };
    let released: i64 = redis::cmd("KV.RELEASE").arg(id).query(&mut con).unwrap();
    assert_eq!(released, 1);
}
