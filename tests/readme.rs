//! The README's redis-cli session, run as written against a fresh server
//! with the real redis-cli (through bash, so its `$(...)` works), so that
//! the manual shows what the server prints. Numbers of ten digits or more
//! (lease ids) match any number, and a command that later names the same
//! number is given the one the server printed; a `...` line ends what is
//! checked of an output.

use std::process::Command;

use tidepool_tests::{must_have_tool, Server};

/// The first ```console block after `## Using it with redis-cli`:
/// (command, expected output lines).
fn session() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let from = readme
        .find("## Using it with redis-cli")
        .expect("the section");
    let block = &readme[from..];
    let start = block.find("```console\n").expect("a console block") + "```console\n".len();
    let end = start + block[start..].find("```").expect("its end");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block[start..end].lines() {
        match line.strip_prefix("$ ") {
            Some(cmd) => steps.push((cmd.to_string(), Vec::new())),
            None => steps
                .last_mut()
                .expect("a command first")
                .1
                .push(line.to_string()),
        }
    }
    steps
}

fn is_id(word: &str) -> bool {
    word.len() >= 10 && word.bytes().all(|b| b.is_ascii_digit())
}

#[test]
fn the_readme_redis_cli_session_is_what_the_server_prints() {
    must_have_tool("redis-cli");
    let s = Server::start(&[]);
    let steps = session();
    assert!(steps.len() >= 5, "{steps:?}");
    // Numbers the README shows -> the ones this server printed.
    let mut ids: Vec<(String, String)> = Vec::new();
    for (cmd, want) in steps {
        assert!(cmd.starts_with("redis-cli "), "{cmd}");
        let mut cmd = cmd.replacen(
            "redis-cli ",
            &format!("redis-cli --no-raw -p {} ", s.port),
            1,
        );
        for (shown, real) in &ids {
            cmd = cmd.replace(shown.as_str(), real);
        }
        let out = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        let got = String::from_utf8(out.stdout).unwrap();
        let got: Vec<&str> = got.lines().collect();
        for (i, w) in want.iter().enumerate() {
            if w == "..." {
                break;
            }
            let g = got
                .get(i)
                .unwrap_or_else(|| panic!("{cmd}: no line {i}: {got:?}"));
            let (ww, gw): (Vec<&str>, Vec<&str>) = (
                w.split_whitespace().collect(),
                g.split_whitespace().collect(),
            );
            assert_eq!(ww.len(), gw.len(), "{cmd}: line {i}: want {w:?}, got {g:?}");
            for (a, b) in ww.iter().zip(&gw) {
                if is_id(a) && is_id(b) {
                    ids.push((a.to_string(), b.to_string()));
                } else {
                    assert_eq!(a, b, "{cmd}: line {i}: want {w:?}, got {g:?}");
                }
            }
        }
        if !want.iter().any(|w| w == "...") {
            assert_eq!(got.len(), want.len(), "{cmd}: {got:?}");
        }
    }
    assert!(!ids.is_empty(), "the lease id was never seen");
}
