//! MULTI / EXEC / DISCARD through the real server, over raw RESP (Redis's
//! exact replies) and through the redis crate's atomic pipeline.

use tidepool_tests::{read_until, resp, Server};

/// Sends `cmds` in one write, then `ECHO end`, and returns the raw replies
/// once they end with `until` (the echo's).
fn exchange(s: &Server, cmds: &[&[&str]], until: &[u8]) -> String {
    let mut c = s.raw();
    let mut req = Vec::new();
    for cmd in cmds {
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        req.extend(resp(&args));
    }
    req.extend(resp(&[b"ECHO", b"end"]));
    std::io::Write::write_all(&mut c, &req).unwrap();
    let (got, closed) = read_until(&mut c, |b| b.ends_with(until));
    assert!(!closed, "the server closed the connection: {got:?}");
    String::from_utf8(got).unwrap()
}

#[test]
fn queued_commands_run_only_at_exec_with_their_replies_in_order() {
    let s = Server::start(&[]);
    let got = exchange(
        &s,
        &[
            &["MULTI"],
            &["SET", "a", "1"],
            &["KV.PUT", "b", "2", "PARENT", "a"],
            &["GET", "a"],
            &["KV.PUT", "c", "3", "PARENT", "nope"],
            &["EXEC"],
        ],
        b"$3\r\nend\r\n",
    );
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(
        &lines[..10],
        ["+OK", "+QUEUED", "+QUEUED", "+QUEUED", "+QUEUED", "*4", "+OK", "+OK", "$1", "1"],
        "{got}"
    );
    // An error at run time takes its place among the replies.
    assert!(lines[10].starts_with("-NOPARENT"), "{got}");
    assert_eq!(lines[11], "$3");
}

#[test]
fn nothing_queued_runs_before_exec_or_after_discard() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let mut raw = s.raw();
    let send = |raw: &mut std::net::TcpStream, args: &[&str], want: &[u8]| {
        let a: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        std::io::Write::write_all(raw, &resp(&a)).unwrap();
        let (got, _) = read_until(raw, |b| b.ends_with(b"\r\n"));
        assert_eq!(got, want, "{args:?}");
    };
    send(&mut raw, &["MULTI"], b"+OK\r\n");
    send(&mut raw, &["SET", "k", "v"], b"+QUEUED\r\n");
    send(&mut raw, &["DEL", "keep"], b"+QUEUED\r\n");
    let _: () = redis::cmd("SET")
        .arg("keep")
        .arg("x")
        .query(&mut c)
        .unwrap();
    // Queued, not run: another connection sees nothing yet.
    let n: i64 = redis::cmd("EXISTS").arg("k").query(&mut c).unwrap();
    assert_eq!(n, 0);
    send(&mut raw, &["DISCARD"], b"+OK\r\n");
    let n: i64 = redis::cmd("EXISTS")
        .arg("k")
        .arg("keep")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1, "discarded: k never set, keep never deleted");
    // Without MULTI, EXEC and DISCARD are errors; MULTI does not nest.
    send(&mut raw, &["EXEC"], b"-ERR EXEC without MULTI\r\n");
    send(&mut raw, &["DISCARD"], b"-ERR DISCARD without MULTI\r\n");
    send(&mut raw, &["MULTI"], b"+OK\r\n");
    send(
        &mut raw,
        &["MULTI"],
        b"-ERR MULTI calls can not be nested\r\n",
    );
    send(&mut raw, &["SET", "k", "v"], b"+QUEUED\r\n");
    std::io::Write::write_all(&mut raw, &resp(&[b"EXEC"])).unwrap();
    let (got, _) = read_until(&mut raw, |b| b.ends_with(b"+OK\r\n"));
    assert_eq!(got, b"*1\r\n+OK\r\n", "a nested MULTI does not abort");
}

#[test]
fn a_command_that_cannot_be_queued_aborts_exec() {
    let s = Server::start(&[]);
    let got = exchange(
        &s,
        &[
            &["MULTI"],
            &["SET", "a", "1"],
            &["NOSUCHCOMMAND", "x"],
            &["SET", "b"],
            &["SUBSCRIBE", "ch"],
            &["EXEC"],
            &["EXISTS", "a"],
        ],
        b"$3\r\nend\r\n",
    );
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[0], "+OK");
    assert_eq!(lines[1], "+QUEUED");
    assert!(lines[2].starts_with("-ERR unknown command"), "{got}");
    assert!(
        lines[3].starts_with("-ERR wrong number of arguments"),
        "{got}"
    );
    assert!(
        lines[4].starts_with("-ERR Command not allowed inside a transaction"),
        "{got}"
    );
    assert_eq!(
        lines[5],
        "-EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(lines[6], ":0", "nothing of the aborted transaction ran");
}

#[test]
fn watch_is_refused_before_anything_runs_and_reset_ends_a_transaction() {
    let s = Server::start(&[]);
    let got = exchange(
        &s,
        &[
            &["WATCH", "k"],
            &["UNWATCH"],
            &["MULTI"],
            &["WATCH", "k"],
            &["SET", "k", "v"],
            &["RESET"],
            &["EXEC"],
            &["EXISTS", "k"],
        ],
        b"$3\r\nend\r\n",
    );
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert!(lines[0].starts_with("-ERR WATCH is not supported"), "{got}");
    assert_eq!(lines[1], "+OK");
    assert_eq!(lines[2], "+OK");
    assert_eq!(lines[3], "-ERR WATCH inside MULTI is not allowed");
    assert_eq!(lines[4], "+QUEUED");
    assert_eq!(lines[5], "+RESET");
    assert_eq!(lines[6], "-ERR EXEC without MULTI");
    assert_eq!(lines[7], ":0");
}

#[test]
fn the_redis_crates_atomic_pipeline_works() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let (a, b, n): (String, Vec<u8>, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("p")
        .arg("v")
        .cmd("GET")
        .arg("p")
        .cmd("EXISTS")
        .arg("p")
        .query(&mut c)
        .unwrap();
    assert_eq!((a.as_str(), &b[..], n), ("OK", &b"v"[..], 1));
    // RESP3 too.
    let mut c3 = redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", s.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let (x,): (Vec<u8>,) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg("p")
        .query(&mut c3)
        .unwrap();
    assert_eq!(x, b"v");
}

#[test]
fn a_transaction_is_bounded_in_what_it_queues() {
    let s = Server::start(&[]);
    let mut raw = s.raw();
    std::io::Write::write_all(&mut raw, &resp(&[b"MULTI"])).unwrap();
    let (got, _) = read_until(&mut raw, |b| b.ends_with(b"\r\n"));
    assert_eq!(got, b"+OK\r\n");
    // 1 GiB of queued requests is the bound: 70 of 16 MiB pass it.
    let big = vec![b'x'; 16 << 20];
    let mut replies = Vec::new();
    for i in 0..70 {
        let key = format!("big{i}");
        std::io::Write::write_all(&mut raw, &resp(&[b"SET", key.as_bytes(), &big])).unwrap();
        let (got, _) = read_until(&mut raw, |b| b.ends_with(b"\r\n"));
        replies.push(String::from_utf8(got).unwrap());
    }
    assert_eq!(replies[0], "+QUEUED\r\n");
    assert!(
        replies
            .last()
            .unwrap()
            .starts_with("-ERR a transaction queues at most"),
        "{:?}",
        replies.last()
    );
    std::io::Write::write_all(&mut raw, &resp(&[b"EXEC"])).unwrap();
    let (got, _) = read_until(&mut raw, |b| b.ends_with(b"\r\n"));
    assert!(
        got.starts_with(b"-EXECABORT"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(s.cli_text(&["DBSIZE"]), "0\n");
}
