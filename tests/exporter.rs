//! prometheus-redis-exporter (Debian's package, which scripts/test.sh
//! installs) scraping the real server: its standard metrics are there with
//! tidepool's real numbers, and it logs no error.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidepool_tests::Server;

/// GET /metrics from the exporter on `port`, once it answers.
fn scrape(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            if s.read_to_string(&mut body).is_ok() && body.contains("redis_up") {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "the exporter never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn prometheus_redis_exporter_sees_real_numbers_and_no_errors() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    for i in 0..10 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg("v")
            .query(&mut c)
            .unwrap();
    }
    let _: Option<Vec<u8>> = redis::cmd("GET").arg("k1").query(&mut c).unwrap();
    let _: Option<Vec<u8>> = redis::cmd("GET").arg("missing").query(&mut c).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut exporter = Command::new("prometheus-redis-exporter")
        .arg(format!("--redis.addr=redis://127.0.0.1:{}", s.port))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus-redis-exporter is installed by scripts/test.sh");
    let metrics = scrape(port);
    let _ = exporter.kill();
    let out = exporter.wait_with_output().unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(value(&metrics, "redis_up"), 1.0);
    assert_eq!(value(&metrics, "redis_db_keys{db=\"db0\"}"), 10.0);
    assert_eq!(value(&metrics, "redis_commands_total{cmd=\"set\"}"), 10.0);
    assert!(value(&metrics, "redis_connected_clients") >= 1.0);
    assert!(value(&metrics, "redis_memory_used_bytes") > 0.0);
    assert!(value(&metrics, "redis_memory_max_bytes") > 0.0);
    assert_eq!(value(&metrics, "redis_keyspace_hits_total"), 1.0);
    assert_eq!(value(&metrics, "redis_keyspace_misses_total"), 1.0);
    assert!(value(&metrics, "redis_commands_processed_total") >= 12.0);
    assert!(value(&metrics, "redis_cpu_user_seconds_total") > 0.0);
    let series = metrics.lines().filter(|l| l.starts_with("redis_")).count();
    assert!(series >= 60, "only {series} redis_ series");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warning"))
        .collect();
    assert!(errors.is_empty(), "the exporter logged: {errors:?}");
}
