//! `tidepool-bench data` against real servers and a real redis-server: every
//! way of moving blocks gives a row, with a put and (but for puts into a full
//! store) a get rate.

use std::process::Command;

use tidepool_tests::{bench_bin, server_bin};

#[test]
fn the_data_bench_measures_every_way() {
    let json = std::env::temp_dir().join(format!("tp-bench-data-{}.json", std::process::id()));
    let out = Command::new(bench_bin())
        .args([
            "data",
            "--sizes",
            "64KiB,1MiB",
            "--total",
            "8MiB",
            "--batch",
            "2MiB",
            "--runs",
            "1",
            "--ceilings",
            "false",
            "--full-dram",
            "16MiB",
            "--server",
        ])
        .arg(server_bin())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running tidepool-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| block | how | put GB/s"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let hows = [
        "tidepool inline RESP (KV.MPUT / KV.MGET)",
        "tidepool tcp data plane",
        "tidepool tcp, --dram-checksums false",
        "tidepool shm data plane",
        "tidepool shm, --dram-checksums false",
        "tidepool shm, puts into a full store (each evicts a block)",
        "redis SET / GET, pipelined",
    ];
    for size in [64 << 10, 1 << 20] {
        for how in hows {
            let row = rows
                .iter()
                .find(|r| r["block_bytes"] == size && r["how"] == how)
                .unwrap_or_else(|| panic!("no row for {how} at {size}: {v}"));
            assert!(row["put_gbs"].as_f64().unwrap() > 0.0, "{row}");
            if how.contains("full store") {
                assert!(row["get_gbs"].is_null(), "{row}");
            } else {
                assert!(row["get_gbs"].as_f64().unwrap() > 0.0, "{row}");
            }
        }
    }
    assert_eq!(rows.len(), 2 * hows.len());
    // Without ceilings only the target against Redis can be told.
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{v}");
    assert_eq!(targets[0]["target"], "tcp get at least 2x Redis GET");
    assert_eq!(targets[0]["block_bytes"], 1 << 20);
    assert!(targets[0]["measured"].as_str().unwrap().ends_with('x'));
    assert!(stdout.contains("| target (issue 4) |"), "{stdout}");
}
