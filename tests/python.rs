//! The `tidepool` Python package (python/) against the real server: its
//! unittest suite (python/tests) and every example (python/examples), run
//! as a user runs them. scripts/test.sh installs the package with pip
//! first; these tests refuse an installed copy older than the sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use tidepool_tests::{cluster_node, converge_on, Etcd, Server};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Panics unless the installed package is this tree's: its Python files
/// the same, its native module built after the Rust sources it holds.
fn assert_installed_fresh() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, tidepool, tidepool._tidepool as n; \
             print(os.path.dirname(tidepool.__file__)); print(n.__file__)",
        ])
        .output()
        .expect("python3 is needed");
    assert!(
        out.status.success(),
        "the tidepool Python package is not installed: `python3 -m pip install ./python` \
         (scripts/test.sh does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (pkg, native) = (
        PathBuf::from(lines.next().unwrap()),
        PathBuf::from(lines.next().unwrap()),
    );
    let src = repo().join("python/tidepool");
    for f in files(&src) {
        let rel = f.strip_prefix(&src).unwrap();
        if f.extension().is_some_and(|e| e == "py" || e == "pyi") {
            assert!(
                std::fs::read(&f).ok() == std::fs::read(pkg.join(rel)).ok(),
                "the installed tidepool package differs from {} : reinstall it with \
                 `python3 -m pip install ./python` (scripts/test.sh does)",
                f.display()
            );
        }
    }
    let built = mtime(&native);
    let rust: Vec<PathBuf> = ["python/src", "client/src", "transport/src", "protocol/src"]
        .iter()
        .flat_map(|d| files(&repo().join(d)))
        .filter(|p| mtime(p) > built)
        .collect();
    assert!(
        rust.is_empty(),
        "the installed native module {} is older than {rust:?}: reinstall with \
         `python3 -m pip install ./python` (scripts/test.sh does)",
        native.display()
    );
}

fn run_python(args: &[&str], env: &[(&str, String)]) {
    let out = Command::new("python3")
        .args(args)
        .current_dir(repo())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("python3 is needed");
    assert!(
        out.status.success(),
        "python3 {args:?} failed ({})\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // unittest -v says "... skipped 'why'" per skipped test: each reason
    // goes to the run's list of what this machine skipped.
    let log = String::from_utf8_lossy(&out.stderr);
    let mut reasons: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(" ... skipped '"))
        .map(|(_, why)| why.trim_end_matches('\''))
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    for why in reasons {
        tidepool_tests::skipped(&format!("python tests: {why}"));
    }
}

#[test]
fn python_unittest_suite() {
    assert_installed_fresh();
    let zmq = [
        "--kv-events-zmq",
        "tcp://127.0.0.1:0",
        "--kv-events-topic",
        "tidepool",
        "--kv-events-block-size",
        "32",
    ];
    let s = Server::start(&zmq);
    // A publisher whose queue holds one event: bursts lose events.
    let lossy = Server::start(&[
        "--kv-events-zmq",
        "tcp://127.0.0.1:0",
        "--kv-events-queue",
        "1",
    ]);
    run_python(
        &["-m", "unittest", "discover", "-s", "python/tests", "-v"],
        &[
            ("TIDEPOOL_ADDR", format!("127.0.0.1:{}", s.port)),
            ("TIDEPOOL_LOSSY_ADDR", format!("127.0.0.1:{}", lossy.port)),
        ],
    );
}

#[test]
fn python_examples_run_and_check_themselves() {
    assert_installed_fresh();
    let mut examples: Vec<PathBuf> = files(&repo().join("python/examples"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty(), "python/examples has no examples");
    for ex in examples {
        // Each on a server of its own: an example's checks count blocks.
        let s = Server::start(&["--kv-events-zmq", "tcp://127.0.0.1:0"]);
        let out = Command::new("python3")
            .arg(&ex)
            .current_dir(repo())
            .env("TIDEPOOL_ADDR", format!("127.0.0.1:{}", s.port))
            .output()
            .expect("python3 is needed");
        let name = ex.file_name().unwrap().to_string_lossy();
        // 77: the engine the example plugs into is not installed here.
        if out.status.code() == Some(77) {
            tidepool_tests::skipped(&format!(
                "python example {name}: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
            continue;
        }
        assert!(
            out.status.success(),
            "{name} failed\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn python_bench_runs() {
    assert_installed_fresh();
    let s = Server::start(&[]);
    let addr = format!("127.0.0.1:{}", s.port);
    let out = Command::new("python3")
        .args([
            "-m",
            "tidepool.bench",
            "--addr",
            &addr,
            "--sizes",
            "64KiB",
            "--total",
            "1MiB",
        ])
        .args([
            "--batch",
            "256KiB",
            "--runs",
            "1",
            "--matches",
            "10",
            "--chain",
            "8",
        ])
        .output()
        .expect("python3 is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "| shm | 64 KiB | put |",
        "| shm | 64 KiB | get |",
        "| tcp | 64 KiB | put |",
        "| tcp | 64 KiB | get |",
        "| python |",
        "| rust |",
    ] {
        assert!(text.contains(row), "no {row} row in\n{text}");
    }
}

#[test]
fn python_cluster_client() {
    assert_installed_fresh();
    let etcd = Etcd::start();
    let nodes: Vec<Server> = (0..3).map(|_| cluster_node(&etcd, &[])).collect();
    converge_on(&nodes.iter().collect::<Vec<_>>(), 3);
    let seeds: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    run_python(
        &["-m", "unittest", "-v", "cluster_check"],
        &[
            ("TIDEPOOL_CLUSTER", seeds.join(",")),
            ("PYTHONPATH", "python/tests".into()),
            ("PYTHONFAULTHANDLER", "1".into()),
        ],
    );
}

/// The type stubs (python/tidepool/_tidepool.pyi) say what the native
/// module has: mypy's stubtest compares them with the module as built.
#[test]
fn python_stubs_match_the_native_module() {
    assert_installed_fresh();
    run_python(&["-m", "mypy.stubtest", "tidepool._tidepool"], &[]);
}
