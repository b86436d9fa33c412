//! `tidepool-bench data` against real servers and a real redis-server: every
//! way of moving blocks gives a row, with a put and (but for puts into a full
//! store) a get rate, every block read back is checked byte for byte, and
//! the bars against the run's own ceilings are printed.

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
            "true",
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
        "redis SET / GET, pipelined, read into reused buffers",
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
    // Every bar this run could tell, each against the ceiling doing the
    // same work without the protocol (iperf3's only where it is installed).
    let bars = v["bars"].as_array().unwrap();
    let count = |what: &str| {
        bars.iter()
            .filter(|b| b["bar"].as_str().unwrap().starts_with(what))
            .count()
    };
    assert_eq!(count("tcp get at least 2x Redis GET"), 1, "{v}");
    assert_eq!(
        count("tcp put / get at least 80% of plain TCP of the same blocks"),
        2,
        "{v}"
    );
    assert_eq!(
        count("shm put at least 80% of memcpy on 2 threads"),
        2,
        "{v}"
    );
    assert_eq!(
        count("shm get at least 80% of the streaming-store copy"),
        2,
        "{v}"
    );
    let iperf3 = if v["iperf3_gbs"].is_null() { 0 } else { 2 };
    assert_eq!(count("tcp put / get at least 80% of iperf3"), iperf3, "{v}");
    for b in bars {
        let m = b["measured"].as_str().unwrap();
        assert!(m.ends_with('x') || m.ends_with('%'), "{b}");
    }
    assert!(
        stdout.contains("| bar | block | measured | met |"),
        "{stdout}"
    );
}
