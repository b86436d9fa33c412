#!/usr/bin/env bash
# Runs every test of the workspace against the real binaries and tools.
# Installs redis-tools and redis-server, etcd and protoc, the verbs headers and
# libclang the RDMA backend builds against (apt-get), and redis-py (pip), when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# A package counts as there when dpkg says it is installed: a file test can
# be satisfied by another package (libclang-cpp.so.14, which other packages
# bring, looks like libclang to a glob, yet bindgen needs libclang-dev).
installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}
need=()
for pkg in redis-tools redis-server prometheus-redis-exporter etcd-server \
  protobuf-compiler pkg-config libibverbs-dev librdmacm-dev libclang-dev; do
  # redis-tools and redis-server: redis-cli, redis-benchmark, redis-server;
  # prometheus-redis-exporter scrapes the server in a test; etcd-server runs
  # under the cluster tests, and etcd-client's build needs protoc.
  # The rest: the `rdma` feature of tidepool-transport (rdma-sys: bindgen
  # over the verbs headers, which needs libclang).
  installed "$pkg" || need+=("$pkg")
done
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# pip installs, for the Python tests. Debian's own Python refuses pip
# installs outside a virtualenv (PEP 668) unless told.
if ! python3 -m pip --version >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
fi
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
# module:package. redis-py (tests/py); numpy (arrays handed to the tidepool
# package); pyzmq, msgpack and msgspec (the KV events subscriber tests);
# mypy (its stubtest checks the package's type stubs).
for pair in redis:redis numpy:numpy zmq:pyzmq msgpack:msgpack msgspec:msgspec mypy:mypy; do
  if ! python3 -c "import ${pair%%:*}" 2>/dev/null; then
    echo "installing ${pair#*:} with pip"
    pip_install "${pair#*:}"
  fi
done

# Each step says how long it took; tests that skip something this machine
# lacks (a tool, a kernel feature) list it at the end.
skip_log=$(mktemp)
export TIDEPOOL_SKIP_LOG=$skip_log
pid=
trap '[ -z "$pid" ] || kill $pid 2>/dev/null || true; rm -f "$skip_log"' EXIT
step() {
  local name=$1 t0=$SECONDS
  shift
  echo "== $name"
  "$@"
  echo "== $name: $((SECONDS - t0)) s"
}

# The serving engines the Python connectors plug into, for their tests:
# SGLang, LMCache and vLLM (CPU-only here), installed without their own
# dependency sets (scripts/engine-deps.txt says why). A machine where they
# do not install still runs everything else; their tests then say they
# skipped.
engines="sglang==0.5.23 lmcache==0.5.6 vllm==0.34.0"
install_engines() {
  pip_install -r scripts/engine-deps.txt && pip_install --no-deps $engines
}
if ! python3 -c 'import sglang, lmcache, vllm, torch' 2>/dev/null; then
  echo "installing $engines (CPU) with pip"
  install_engines || echo "could not install the engines: their connector tests will skip"
fi

step "format" cargo fmt --all -- --check
# Integration tests start the real server binary: build it first (they
# refuse a binary older than its sources).
step "build binaries" cargo build --workspace --bins --examples
# The tidepool Python package, built by maturin as `pip install ./python`
# builds it for a user, but with the dev profile: it then reuses the debug
# build above (the tests check behaviour; bench figures need the release
# build a plain `pip install ./python` makes).
install_python_package() {
  MATURIN_PEP517_ARGS="--profile dev" pip_install --force-reinstall --no-deps ./python
}
step "install python package" install_python_package
# The transport crate is tested once, with its `rdma` feature: that build
# holds the tcp and shm code unchanged plus the RDMA backend's device-free
# parts (this machine has no RDMA device; the verbs path itself never runs
# here).
step "test workspace" cargo test --workspace --exclude tidepool-transport
step "test transport (rdma feature)" cargo test -p tidepool-transport --features rdma
step "build client (rdma)" cargo build -p tidepool-client --features rdma
# The server built with RDMA must start and say why RDMA is off, not fail.
step "build server (rdma)" cargo build -p tidepool-server --features rdma
port=$((20000 + RANDOM % 20000))
target/debug/tidepool-server --port "$port" --data-port 0 --shm false >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
rdma=$(redis-cli -p "$port" KV.DATAPLANE | sed -n '/^rdma$/{n;p}')
echo "server built with rdma: KV.DATAPLANE rdma = $rdma"
case "$rdma" in
  "unavailable: no RDMA device"|*:*:*) ;;
  *) echo "unexpected rdma state: '$rdma'"; exit 1 ;;
esac
kill $pid
# Leave the default (rdma-less) server binary in place for later runs.
step "build server" cargo build -p tidepool-server
if [ -s "$skip_log" ]; then
  echo "== skipped or reduced on this machine:"
  sort -u "$skip_log" | sed 's/^/   /'
else
  echo "== nothing skipped"
fi
