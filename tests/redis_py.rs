//! redis-py, as Python users write it, against the real server: the script
//! tests/py/redis_py_client.py (scripts/test.sh installs redis-py).

use std::process::Command;

use tidepool_tests::Server;

#[test]
fn redis_py_client_code_works() {
    let s = Server::start(&[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/redis_py_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(s.port.to_string())
        .output()
        .expect("python3 is needed (scripts/test.sh installs redis-py for it)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
