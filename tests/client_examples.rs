//! tidepool-client's examples (client/examples/) run against the real
//! server: what the README points engine authors to must work.

use std::process::Command;

use tidepool_tests::{example_bin, Server};

fn run_example(name: &str, s: &Server) -> String {
    let out = Command::new(example_bin(name))
        .arg(format!("127.0.0.1:{}", s.port))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_engine_example_stores_a_chain_and_reads_a_shared_prefix() {
    let s = Server::start(&[]);
    let out = run_example("engine", &s);
    assert!(
        out.contains("6 of 10 blocks of the second prompt are cached"),
        "{out}"
    );
    assert!(out.contains("read 6 blocks back"), "{out}");
}

#[test]
fn the_blocking_example_puts_gets_and_deletes() {
    let s = Server::start(&[]);
    let out = run_example("blocking", &s);
    assert!(
        out.contains("tier Some(\"dram\")") && out.contains("deleted"),
        "{out}"
    );
}
