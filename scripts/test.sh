#!/usr/bin/env bash
# Runs every test of the workspace against the real binaries and tools.
# Installs redis-tools and redis-server, and the verbs headers and libclang the
# RDMA backend builds against, with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# The `rdma` feature of tidepool-transport (rdma-sys: bindgen over the verbs headers).
[ -e /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
[ -e /usr/include/rdma/rdma_cma.h ] || need+=(librdmacm-dev)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing ${need[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
# Integration tests start the real server binary: build it first.
cargo build --workspace --bins
cargo test --workspace
# The RDMA backend: built and its device-free parts tested (this machine has no
# RDMA device; the verbs path itself never runs here).
cargo test -p tidepool-transport --features rdma
cargo build -p tidepool-client --features rdma
# The server built with RDMA must start and say why RDMA is off, not fail.
cargo build -p tidepool-server --features rdma
port=$((20000 + RANDOM % 20000))
target/debug/tidepool-server --port "$port" --data-port 0 --shm false >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
rdma=$(redis-cli -p "$port" KV.DATAPLANE | sed -n '/^rdma$/{n;p}')
echo "server built with rdma: KV.DATAPLANE rdma = $rdma"
case "$rdma" in
  "unavailable: no RDMA device"|*:*:*) ;;
  *) echo "unexpected rdma state: '$rdma'"; exit 1 ;;
esac
kill $pid
# Leave the default (rdma-less) server binary in place for later runs.
cargo build -p tidepool-server
