//! Three nodes, each in a network namespace of its own, joined by veth
//! pairs on a bridge (in a namespace of its own too), with etcd and the
//! test on the host's end of one more veth: each node binds and announces
//! its own address, redirects, fans KV.MATCH out and is reached by the
//! client across namespaces. Skipped, with a message, where namespaces
//! are refused (no root, no `ip`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidepool_client::{chain_keys, Client, ClientOptions, PlaneChoice};
use tidepool_tests::{server_bin, skipped, Etcd};

/// The namespaces and links, removed when dropped.
struct Net {
    tag: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// The hub (a bridge), `nodes` namespaces at 10.77.N.2.., and the host
    /// at 10.77.N.1, where N comes from the test's process id.
    fn build(nodes: usize) -> Result<(Net, u8), String> {
        let n = (std::process::id() % 200) as u8 + 20;
        let tag = format!("tp{n}");
        let net = Net { tag: tag.clone() };
        let hub = format!("{tag}hub");
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let join = |inside: Option<&str>, i: usize, addr: &str| -> Result<(), String> {
            let (v, b) = (format!("{tag}v{i}"), format!("{tag}b{i}"));
            ip(&["link", "add", &v, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &b, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &b, "master", "br0", "up"])?;
            match inside {
                Some(ns) => {
                    ip(&["link", "set", &v, "netns", ns])?;
                    ip(&["-n", ns, "addr", "add", addr, "dev", &v])?;
                    ip(&["-n", ns, "link", "set", &v, "up"])?;
                    ip(&["-n", ns, "link", "set", "lo", "up"])
                }
                None => {
                    ip(&["addr", "add", addr, "dev", &v])?;
                    ip(&["link", "set", &v, "up"])
                }
            }
        };
        join(None, 0, &format!("10.77.{n}.1/24"))?;
        for i in 1..=nodes {
            let ns = format!("{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            join(Some(&ns), i, &format!("10.77.{n}.{}/24", i + 1))?;
        }
        Ok((net, n))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so their peers.
        for i in 1..=8 {
            let _ = ip(&["netns", "del", &format!("{}n{i}", self.tag)]);
        }
        let _ = ip(&["netns", "del", &format!("{}hub", self.tag)]);
        let _ = ip(&["link", "del", &format!("{}v0", self.tag)]);
    }
}

/// A node running in namespace `ns`, killed when dropped.
struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(ns: &str, host: &str, port: u16, etcd: &str) -> Node {
        let addr = format!("{host}:{port}");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(server_bin())
            .args(["--bind", host, "--port", &port.to_string()])
            .args(["--announce", &addr, "--cluster", &format!("etcd://{etcd}")])
            .args(["--cluster-lease-ttl", "2", "--dram", "64MiB"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("ip netns exec tidepool-server");
        let node = Node { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while node.info().is_none() {
            assert!(
                Instant::now() < deadline,
                "the node at {} did not start",
                node.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn redis(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.addr))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    fn info(&self) -> Option<String> {
        let client = redis::Client::open(format!("redis://{}/", self.addr)).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok()
    }

    fn cli(&self, args: &[&str]) -> String {
        let (host, port) = self.addr.split_once(':').unwrap();
        let out = Command::new("redis-cli")
            .args(["-h", host, "-p", port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[test]
fn nodes_in_separate_namespaces_form_one_cluster() {
    let (net, n) = match Net::build(3) {
        Ok(built) => built,
        Err(why) => {
            skipped(&format!(
                "network namespaces refused here ({why}): the veth cluster test did not run"
            ));
            return;
        }
    };
    let host = format!("10.77.{n}.1");
    let etcd = Etcd::start_on(&host);
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            Node::start(
                &format!("{}n{i}", net.tag),
                &format!("10.77.{n}.{}", i + 1),
                7000 + i as u16,
                &etcd.endpoint,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|node| {
        node.info()
            .is_some_and(|i| i.contains("cluster_state:ok") && i.contains("cluster_size:3\r"))
    }) {
        assert!(Instant::now() < deadline, "{:?}", nodes[0].info());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each node names the others by their own addresses.
    let listed = nodes[0].cli(&["CLUSTER", "NODES"]);
    for node in &nodes {
        assert!(listed.contains(&format!("{}@", node.addr)), "{listed}");
    }
    // redis-cli -c follows MOVED across namespaces.
    for i in 0..60 {
        assert_eq!(
            nodes[0].cli(&["-c", "SET", &format!("ns:{i}"), &format!("v{i}")]),
            "OK"
        );
    }
    for i in 0..60 {
        assert_eq!(
            nodes[2].cli(&["-c", "GET", &format!("ns:{i}")]),
            format!("v{i}")
        );
    }
    for node in &nodes {
        let size: i64 = redis::cmd("DBSIZE").query(&mut node.redis()).unwrap();
        assert!(size > 5, "{} holds {size} of 60", node.addr);
    }
    // The client, on the host, over tcp across the namespaces and over shm
    // (one host: the nodes' sockets are in the same /tmp); a chain spread
    // over the three, matched through one node's fan-out.
    let rt = tidepool_tests::rt();
    rt.block_on(async {
        for (plane, want) in [(PlaneChoice::Tcp, "tcp"), (PlaneChoice::Auto, "shm")] {
            let opts = ClientOptions {
                connections: 2,
                plane,
                ..ClientOptions::default()
            };
            let c = Client::connect_cluster_with(&[&nodes[1].addr], opts)
                .await
                .unwrap();
            assert!(c.cluster_nodes().iter().all(|(_, p)| *p == Some(want)));
            let keys = chain_keys(want.as_bytes(), 4, &(0..4 * 40).collect::<Vec<u32>>());
            let blocks: Vec<(Bytes, Bytes)> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), Bytes::from(vec![i as u8; 100_000])))
                .collect();
            c.put_chain(&blocks, None).await.unwrap();
            let got = c.get_many(&keys).await.unwrap();
            for (i, g) in got.iter().enumerate() {
                assert_eq!(g.as_ref(), Some(&blocks[i].1), "block {i} over {want}");
            }
        }
    });
    let keys = chain_keys(b"tcp", 4, &(0..4 * 40).collect::<Vec<u32>>());
    let mut cmd = redis::cmd("KV.MATCH");
    cmd.arg(keys.len());
    for k in &keys {
        cmd.arg(&k[..]);
    }
    cmd.arg("WITHNODES");
    let got: redis::Value = cmd.query(&mut nodes[0].redis()).unwrap();
    let text = format!("{got:?}");
    assert!(text.contains("matched"), "{text}");
    for node in &nodes {
        assert!(text.contains(&node.addr), "{text}");
    }
}
