//! `tidepool-bench replay` through the real server: the hit ratio the server
//! measures equals the offline simulation of its eviction policy.

use std::path::{Path, PathBuf};
use std::process::Command;

use tidepool_tests::{bench_bin, server_bin, skipped};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tp-replay-{}-{name}", std::process::id()))
}

fn run(args: &[&str]) -> String {
    let out = Command::new(bench_bin())
        .args(args)
        .output()
        .expect("running tidepool-bench");
    assert!(
        out.status.success(),
        "tidepool-bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a generated trace of 1,500 requests (chains of about 10 blocks).
fn gen_trace(name: &str, shape: &str, seed: u64) -> PathBuf {
    let trace = tmp(name);
    let seed = seed.to_string();
    run(&[
        "gen-trace",
        "--shape",
        shape,
        "--requests",
        "1500",
        "--chain",
        "10",
        "--seed",
        &seed,
        "--out",
        &trace.display().to_string(),
    ]);
    trace
}

/// Replays `trace` into a server of `capacity` blocks and returns the JSON.
fn replay(
    trace: &Path,
    capacity: usize,
    limit: Option<usize>,
    svg: Option<&Path>,
    eviction: &str,
) -> serde_json::Value {
    replay_with(
        trace,
        capacity,
        limit,
        svg,
        eviction,
        &["--block-bytes", "1024"],
    )
}

/// `replay` with more arguments for the bench.
fn replay_with(
    trace: &Path,
    capacity: usize,
    limit: Option<usize>,
    svg: Option<&Path>,
    eviction: &str,
    extra: &[&str],
) -> serde_json::Value {
    let json = tmp(&format!("{capacity}-{eviction}.json"));
    let server = server_bin();
    let mut args = vec![
        "replay".to_string(),
        "--trace".into(),
        trace.display().to_string(),
        "--capacity-blocks".into(),
        capacity.to_string(),
        "--server".into(),
        server.display().to_string(),
        "--json".into(),
        json.display().to_string(),
        "--quiet".into(),
        "--eviction".into(),
        eviction.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    if let Some(l) = limit {
        args.extend(["--limit".into(), l.to_string()]);
    }
    if let Some(s) = svg {
        args.extend(["--svg".into(), s.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let table = run(&refs);
    assert!(table.contains("prefix hit ratio (server)"), "{table}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    v
}

fn assert_matches_simulation(v: &serde_json::Value) {
    let server = v["hit_ratio"].as_f64().unwrap();
    assert!(server > 0.0, "no hits at all: {v}");
    // Block for block, request by request: every request matched as many
    // leading blocks through the server as in the simulation. The server's
    // SSD thread takes a KV.MPUT's demotions when it ends, so nothing here
    // depends on timing.
    assert_eq!(
        v["first_divergence"],
        serde_json::Value::Null,
        "a request matched a different number of blocks than in the simulation"
    );
    assert_eq!(v["requests_matching_simulation"], v["requests"]);
    assert_eq!(server, v["simulated_hit_ratio"].as_f64().unwrap());
    assert!(
        v["server_evictions"].as_i64().unwrap() > 0,
        "the cache never filled: {v}"
    );
    assert_eq!(v["refused_puts"].as_i64().unwrap(), 0);
}

#[test]
fn the_server_matches_the_simulation_on_generated_traces() {
    for shape in ["chat", "docs", "scan", "agents"] {
        let trace = gen_trace(&format!("{shape}.jsonl"), shape, 3);
        let svg = tmp(&format!("{shape}.svg"));
        let v = replay(&trace, 300, None, Some(&svg), "lru");
        eprintln!(
            "{shape} lru: server {} simulation {}",
            v["hit_ratio"], v["simulated_hit_ratio"]
        );
        assert_matches_simulation(&v);
        let a = replay(&trace, 300, None, None, "adaptive");
        eprintln!(
            "{shape} adaptive: server {} simulation {}",
            a["hit_ratio"], a["simulated_hit_ratio"]
        );
        assert_matches_simulation(&a);
        let plot = std::fs::read_to_string(&svg).unwrap();
        assert!(
            plot.starts_with("<svg") && plot.contains("hit ratio"),
            "not a plot"
        );
        assert!(v["hit_ratio_over_time"].as_array().unwrap().len() >= 10);
        std::fs::remove_file(&svg).unwrap();
        std::fs::remove_file(&trace).unwrap();
    }
}

#[test]
fn the_server_matches_the_simulation_on_mooncakes_trace() {
    let trace =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/conversation_trace.jsonl");
    if !trace.exists() {
        skipped(&format!("Mooncake's trace: {} not found", trace.display()));
        return;
    }
    // A slice: the first 3,000 requests, 1,000 blocks of capacity.
    for eviction in ["lru", "adaptive"] {
        let v = replay(&trace, 1000, Some(3000), None, eviction);
        eprintln!(
            "mooncake slice, {eviction}: server {} simulation {}",
            v["hit_ratio"], v["simulated_hit_ratio"]
        );
        assert_matches_simulation(&v);
    }
}

/// With an SSD tier under DRAM, `lru` and `adaptive` through the server
/// equal the two-tier simulation (demotion, first-in first-out segment
/// reclaim with tombstones, staging on match), staging on and off.
#[test]
fn the_server_matches_the_two_tier_simulation() {
    let mut traces = Vec::new();
    for shape in ["chat", "scan"] {
        let trace = gen_trace(&format!("ssd-{shape}.jsonl"), shape, 5);
        traces.push((shape.to_string(), trace, 200, 1000, None));
    }
    let mooncake =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/conversation_trace.jsonl");
    if mooncake.exists() {
        traces.push(("mooncake".into(), mooncake, 1000, 3000, Some(3000)));
    } else {
        skipped(&format!(
            "the Mooncake slice: {} not found",
            mooncake.display()
        ));
    }
    for (name, trace, dram, ssd, limit) in &traces {
        // `adaptive` over SSD on the generated traces, staging on (the
        // Mooncake slice and staging off run `lru` only, to keep the test
        // short).
        let runs = [("true", "lru"), ("false", "lru"), ("true", "adaptive")];
        for (stage, eviction) in runs {
            if name == "mooncake" && eviction != "lru" {
                continue;
            }
            let ssd = ssd.to_string();
            let extra = [
                "--block-bytes",
                "4096",
                "--ssd-blocks",
                &ssd,
                "--ssd-stage-on-match",
                stage,
            ];
            let v = replay_with(trace, *dram, *limit, None, eviction, &extra);
            eprintln!(
                "{name} over SSD ({eviction}), staging {stage}: server {} simulation {}",
                v["hit_ratio"], v["simulated_hit_ratio"]
            );
            assert_eq!(v["simulated_policy"], format!("{eviction} over SSD"));
            assert_matches_simulation(&v);
        }
        if name != "mooncake" {
            std::fs::remove_file(trace).unwrap();
        }
    }
}

/// `tidepool-bench sched` runs its four policies against real nodes.
#[test]
fn the_scheduler_simulation_runs_every_policy() {
    let trace = tmp("sched.jsonl");
    run(&[
        "gen-trace",
        "--shape",
        "chat",
        "--requests",
        "300",
        "--chain",
        "8",
        "--seed",
        "5",
        "--out",
        &trace.display().to_string(),
    ]);
    let server = server_bin().display().to_string();
    let json = tmp("sched.json");
    let svg = tmp("sched.svg");
    let common = [
        "sched",
        "--trace",
        &trace.display().to_string(),
        "--instances",
        "3",
        "--local-blocks",
        "200",
        "--pool-blocks",
        "600",
        "--server",
        &server,
        "--speed",
        "20",
    ];
    let mut args: Vec<&str> = common.to_vec();
    let (j, s) = (json.display().to_string(), svg.display().to_string());
    args.extend(["--json", &j, "--svg", &s, "--slo", "1000"]);
    let table = run(&args);
    for p in ["round-robin", "least-loaded", "cache-aware", "conductor"] {
        assert!(table.contains(p), "{table}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for r in v["results"].as_array().unwrap() {
        assert_eq!(
            r["served"].as_u64().unwrap() + r["rejected"].as_u64().unwrap(),
            300
        );
        assert_eq!(
            r["rejected"].as_u64().unwrap(),
            0,
            "SLO of 1000 s: nothing rejected"
        );
        let h = r["hit_ratio"].as_f64().unwrap();
        assert!(h > 0.0 && h < 1.0, "{r}");
    }
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    // An SLO nobody can meet: Conductor rejects everything, early.
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["--slo", "0.000001", "--policies", "conductor", "--json", &j]);
    run(&args);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["results"][0]["rejected"].as_u64().unwrap(), 300);
    for f in [&trace, &json, &svg] {
        std::fs::remove_file(f).unwrap();
    }
}
