//! The samples in deploy/: the three nodes' TOML files form a cluster on a
//! real etcd (their ports and etcd replaced by the test's), and the systemd
//! units pass `systemd-analyze verify` (skipped where it is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use tidepool_tests::{converge_on, server_bin, skipped, Etcd, Server};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn the_sample_configs_form_a_cluster() {
    let etcd = Etcd::start();
    let spec = format!("etcd://{}", etcd.endpoint);
    let nodes: Vec<Server> = (1..=3)
        .map(|i| {
            let file = deploy().join(format!("cluster/node{i}.toml"));
            let file = file.to_str().unwrap().to_string();
            // The file's settings, but this test's etcd, ports and size.
            Server::start(&[
                "--config",
                &file,
                "--cluster",
                &spec,
                "--data-port",
                "0",
                "--dram",
                "64MiB",
                "--cluster-lease-ttl",
                "2",
            ])
        })
        .collect();
    // Each announces 127.0.0.1:700N (its file's): the test only checks
    // that the three join and share the slots.
    converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
    let out = nodes[0].cli_text(&["CLUSTER", "NODES"]);
    for i in 1..=3 {
        assert!(out.contains(&format!("127.0.0.1:700{i}@")), "{out}");
    }
}

#[test]
fn the_systemd_units_verify() {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skipped("systemd-analyze is not installed: deploy/systemd not verified");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tidepool-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for (from, to) in [
        ("tidepool-etcd.service", "tidepool-etcd.service"),
        ("tidepool@.service", "tidepool@node1.service"),
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(from)).unwrap();
        // The binary where this checkout built it.
        let text = text.replace(
            "/usr/local/bin/tidepool-server",
            server_bin().to_str().unwrap(),
        );
        std::fs::write(dir.join(to), text).unwrap();
        units.push(dir.join(to));
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
