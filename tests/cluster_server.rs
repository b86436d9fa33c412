//! Three tidepool-server nodes in cluster mode on a real etcd: they share
//! the 16384 slots, answer CLUSTER commands in Redis's formats, redirect
//! with MOVED (which `redis-cli -c` follows), refuse keys across slots with
//! CROSSSLOT, and give a node's slots to the others when it dies.

use std::time::{Duration, Instant};

use redis::Value;
use tidepool_tests::{cluster_node, converge, Etcd, Server};

fn node(etcd: &Etcd) -> Server {
    cluster_node(etcd, &[])
}

#[test]
fn three_nodes_share_the_slots_redirect_and_take_over() {
    let etcd = Etcd::start();
    let (a, b, c) = (node(&etcd), node(&etcd), node(&etcd));
    converge(&[&a, &b, &c], "three nodes", |i| {
        i.contains("cluster_state:ok") && i.contains("cluster_size:3")
    });
    let mut con = a.redis();
    let info: String = redis::cmd("INFO").arg("cluster").query(&mut con).unwrap();
    assert!(info.contains("cluster_enabled:1"), "{info}");
    // CLUSTER SLOTS covers every slot, each range with a node's address.
    let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
    let mut covered = 0;
    for r in &slots {
        let Value::Array(r) = r else { panic!("{r:?}") };
        let (Value::Int(first), Value::Int(last)) = (&r[0], &r[1]) else {
            panic!()
        };
        covered += last - first + 1;
        let Value::Array(n) = &r[2] else { panic!() };
        assert_eq!(n[0], Value::BulkString(b"127.0.0.1".to_vec()));
    }
    assert_eq!(covered, 16384);
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).unwrap();
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    assert_eq!(nodes.matches("myself,master").count(), 1, "{nodes}");
    let myid: String = redis::cmd("CLUSTER").arg("MYID").query(&mut con).unwrap();
    assert!(
        nodes.contains(&format!("{myid} 127.0.0.1:{}", a.port)),
        "{nodes}"
    );
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("foo")
        .query(&mut con)
        .unwrap();
    assert_eq!(slot, 12182);

    // Keys on other nodes: MOVED to their owner; keys in several slots:
    // CROSSSLOT; one hash tag keeps them together.
    let mut moved = 0;
    for i in 0..30 {
        let key = format!("k{i}");
        let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg("v").query(&mut con);
        if let Err(e) = r {
            assert_eq!(e.code(), Some("MOVED"), "{key}: {e}");
            moved += 1;
        }
    }
    assert!(
        moved > 5,
        "about two thirds of the keys live elsewhere: {moved}"
    );
    let e = redis::cmd("MGET")
        .arg("a")
        .arg("b")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    // Inside a transaction a redirected command aborts it, as in Redis.
    let mut raw = a.raw();
    let mut req = tidepool_tests::resp(&[b"MULTI"]);
    req.extend(tidepool_tests::resp(&[b"MGET", b"a", b"b"]));
    req.extend(tidepool_tests::resp(&[b"EXEC"]));
    std::io::Write::write_all(&mut raw, &req).unwrap();
    let (got, _) =
        tidepool_tests::read_until(&mut raw, |b| b.windows(9).any(|w| w == b"EXECABORT"));
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.contains("-CROSSSLOT") && got.contains("-EXECABORT"),
        "{got}"
    );
    // redis-cli -c follows MOVED: every key set through node a reads back
    // through node c.
    for i in 0..40 {
        let out = a.cli(&["-c", "SET", &format!("key:{i}"), &format!("value {i}")]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    }
    for i in 0..40 {
        let out = c.cli(&["-c", "GET", &format!("key:{i}")]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("value {i}")
        );
    }
    // Chained KV.PUTs whose keys share a hash tag stay on one node.
    let out = b.cli(&["-c", "KV.PUT", "{chain}0", "x"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    let out = b.cli(&["-c", "KV.PUT", "{chain}1", "y", "PARENT", "{chain}0"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    let out = b.cli(&["-c", "KV.MATCH", "2", "{chain}0", "{chain}1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");

    // c dies: within its 2 s TTL plus 5 s, a and b cover every slot.
    let t = Instant::now();
    drop(c);
    converge(&[&a, &b], "c dead", |i| {
        i.contains("cluster_state:ok") && i.contains("cluster_size:2")
    });
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
}

/// The redis crate's cluster client (which reads CLUSTER SLOTS and follows
/// MOVED) stores and reads keys spread over three nodes.
#[test]
fn the_redis_crates_cluster_client_works() {
    let etcd = Etcd::start();
    let nodes = [node(&etcd), node(&etcd), node(&etcd)];
    converge(&[&nodes[0], &nodes[1], &nodes[2]], "three nodes", |i| {
        i.contains("cluster_state:ok") && i.contains("cluster_size:3")
    });
    let client =
        redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}/", nodes[1].port)])
            .unwrap();
    let mut con = client.get_connection().unwrap();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("ck{i}"))
            .arg(format!("v{i}"))
            .query(&mut con)
            .unwrap();
    }
    for i in 0..200 {
        let v: String = redis::cmd("GET")
            .arg(format!("ck{i}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(v, format!("v{i}"));
    }
    // The keys really are spread: every node holds some.
    for n in &nodes {
        let size: i64 = redis::cmd("DBSIZE").query(&mut n.redis()).unwrap();
        assert!(size > 20, "node {} holds {size} of 200", n.port);
    }
}
