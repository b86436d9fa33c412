//! Faults in a cluster of real nodes on a real etcd: a node killed with
//! SIGKILL (its slots covered again within the lease TTL plus 5 s while
//! the others keep serving; restarted on its port, it joins again), and
//! etcd stopped and started again (the nodes keep serving with the last
//! map meanwhile, a node cannot join, and the map moves on once etcd is
//! back).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_cluster::key_slot;
use tidepool_tests::{cluster_info, cluster_node, converge_on, slot_owners, Etcd, Server};

/// Keys whose slots `node` owns.
fn keys_of(owners: &[String], node: &Server, n: usize, prefix: &str) -> Vec<String> {
    let me = format!("127.0.0.1:{}", node.port);
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .filter(|k| owners[key_slot(k.as_bytes()) as usize] == me)
        .take(n)
        .collect()
}

/// Puts and reads back `keys` on `node` in a loop until told to stop;
/// counts rounds and every failure.
fn keep_serving(
    node: &Server,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<Vec<String>>, Arc<AtomicU64>) {
    let rounds = Arc::new(AtomicU64::new(0));
    let mut con = node.redis();
    let counted = rounds.clone();
    let handle = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut round = 0u64;
        while !stop.load(Relaxed) {
            for k in &keys {
                let v = format!("{k}={round}");
                let put: redis::RedisResult<()> = redis::cmd("SET").arg(k).arg(&v).query(&mut con);
                let got: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(k).query(&mut con);
                match (put, got) {
                    (Ok(()), Ok(Some(g))) if g == v => {}
                    other => failures.push(format!("{k}: {other:?}")),
                }
            }
            let matched: redis::RedisResult<i64> = redis::cmd("KV.MATCH")
                .arg(keys.len())
                .arg(&keys)
                .query(&mut con);
            if !matches!(matched, Ok(n) if n == keys.len() as i64) {
                failures.push(format!("KV.MATCH: {matched:?}"));
            }
            round += 1;
            counted.store(round, Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
        failures
    });
    (handle, rounds)
}

/// Waits until `rounds` moves on by `n`.
fn rounds_pass(rounds: &AtomicU64, n: u64) {
    let to = rounds.load(Relaxed) + n;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rounds.load(Relaxed) < to {
        assert!(Instant::now() < deadline, "the serving loop stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_killed_node_is_covered_within_the_ttl_and_rejoins_on_restart() {
    let etcd = Etcd::start();
    let (a, b) = (cluster_node(&etcd, &[]), cluster_node(&etcd, &[]));
    let c = cluster_node(&etcd, &[]);
    converge_on(&[&a, &b, &c], 3);
    let owners = slot_owners(&a);
    let c_port = c.port;
    let c_keys = keys_of(&owners, &c, 20, "on-c");
    for k in &c_keys {
        let out = a.cli(&["-c", "SET", k, "before"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    // a and b keep serving their own keys all through.
    let stop = Arc::new(AtomicBool::new(false));
    let (serving_a, rounds_a) = keep_serving(&a, keys_of(&owners, &a, 10, "on-a"), stop.clone());
    let (serving_b, rounds_b) = keep_serving(&b, keys_of(&owners, &b, 10, "on-b"), stop.clone());
    rounds_pass(&rounds_a, 3);

    let killed = Instant::now();
    drop(c); // SIGKILL
    converge_on(&[&a, &b], 2);
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2 + 5), "covered after {took:?}");
    // c's blocks died with it (a cache): a miss, never old or wrong bytes.
    for k in &c_keys {
        let out = a.cli(&["-c", "GET", k]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "{k}");
    }
    rounds_pass(&rounds_a, 3);
    rounds_pass(&rounds_b, 3);

    // a and b served their keys all through c's death and the take-over.
    stop.store(true, Relaxed);
    for (who, t) in [("a", serving_a), ("b", serving_b)] {
        let failures = t.join().unwrap();
        assert!(
            failures.is_empty(),
            "{who} failed while c died: {failures:?}"
        );
    }

    // Restarted on its port (a new node id), it joins again (taking its
    // share of the slots, with their blocks) and serves.
    let args = tidepool_tests::cluster_args(&etcd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Server::start_on(c_port, &args);
    converge_on(&[&a, &b, &c], 3);
    let nodes = a.cli_text(&["CLUSTER", "NODES"]);
    assert!(nodes.contains(&format!("127.0.0.1:{c_port}@")), "{nodes}");
    let owners = slot_owners(&a);
    for k in keys_of(&owners, &c, 10, "again") {
        let out = a.cli(&["-c", "SET", &k, "v"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
        let got: Option<String> = redis::cmd("GET").arg(&k).query(&mut c.redis()).unwrap();
        assert_eq!(got.as_deref(), Some("v"), "{k} lives on the restarted node");
    }
}

#[test]
fn nodes_keep_serving_while_etcd_is_down_and_catch_up_after() {
    let mut etcd = Etcd::start();
    let nodes: Vec<Server> = (0..3).map(|_| cluster_node(&etcd, &[])).collect();
    let refs: Vec<&Server> = nodes.iter().collect();
    converge_on(&refs, 3);
    let owners = slot_owners(&nodes[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut serving = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        serving.push(keep_serving(
            n,
            keys_of(&owners, n, 8, &format!("n{i}")),
            stop.clone(),
        ));
    }
    // A chain over all three nodes, matched through the fan-out.
    let chain: Vec<String> = (0..24).map(|i| format!("chain:{i}")).collect();
    for k in &chain {
        let out = nodes[0].cli(&["-c", "KV.PUT", k, "v"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    let mut match_args = vec!["KV.MATCH".to_string(), chain.len().to_string()];
    match_args.extend(chain.iter().cloned());
    let match_args: Vec<&str> = match_args.iter().map(String::as_str).collect();

    etcd.stop();
    let down = Instant::now();
    // Past the 2 s lease TTL twice over: the nodes keep the last map.
    while down.elapsed() < Duration::from_secs(5) {
        for n in &nodes {
            let info = cluster_info(n);
            assert!(info.contains("cluster_state:ok"), "{info}");
            assert_eq!(n.cli_text(&match_args).trim(), "24");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (_, rounds) in &serving {
        rounds_pass(rounds, 3);
    }
    // No map change without etcd: a new node cannot join.
    let joining = Command::new(tidepool_tests::server_bin())
        .args(["--port", "0"])
        .args(tidepool_tests::cluster_args(&etcd))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!joining.status.success());
    let why = String::from_utf8_lossy(&joining.stderr);
    assert!(why.contains("etcd"), "{why}");

    etcd.restart();
    for (_, rounds) in &serving {
        rounds_pass(rounds, 3);
    }
    stop.store(true, Relaxed);
    for (i, (t, _)) in serving.into_iter().enumerate() {
        let failures = t.join().unwrap();
        assert!(failures.is_empty(), "node {i}: {failures:?}");
    }
    // Back: a fourth node joins and every node moves on to the new map.
    let fourth = cluster_node(&etcd, &[]);
    let mut all: Vec<&Server> = nodes.iter().collect();
    all.push(&fourth);
    converge_on(&all, 4);
}
