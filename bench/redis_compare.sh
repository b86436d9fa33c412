#!/usr/bin/env bash
# Side-by-side redis-benchmark of tidepool-server and redis-server on this machine.
#
#   bash bench/redis_compare.sh            # full table (a few minutes)
#   REPS=1 bash bench/redis_compare.sh     # quicker, noisier
#   BASE=/path/to/older/tidepool-server bash bench/redis_compare.sh
#                                          # a column for another build too
#   BIN=/path/to/tidepool-server ...       # that binary instead of building one
#
# Same flags for both servers, runs alternating (tidepool, redis, tidepool, ...),
# the median of REPS runs reported, and the ratio tidepool/redis. With BASE,
# that build runs in the same rotation on its own port, and a last column
# gives this build over it.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
CLIENTS=${CLIENTS:-50}
TP_PORT=${TP_PORT:-7379}
RD_PORT=${RD_PORT:-7380}
BASE_PORT=${BASE_PORT:-7381}
TP_FLAGS=${TP_FLAGS:-}
BASE=${BASE:-}
for tool in redis-server redis-benchmark redis-cli; do
  command -v $tool >/dev/null || { echo "$tool missing: apt-get install redis-server redis-tools" >&2; exit 1; }
done

if [ -z "${BIN:-}" ]; then
  cargo build --release --bin tidepool-server >&2
  BIN=target/release/tidepool-server
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

RUST_LOG=warn $BIN --port $TP_PORT --dram 8GiB $TP_FLAGS &
pids+=($!)
ports="$TP_PORT $RD_PORT"
if [ -n "$BASE" ]; then
  RUST_LOG=warn $BASE --port $BASE_PORT --dram 8GiB $TP_FLAGS &
  pids+=($!)
  ports="$ports $BASE_PORT"
fi
redis-server --port $RD_PORT --save "" --appendonly no --maxmemory 8gb --daemonize no \
  --logfile /dev/null --protected-mode no &
pids+=($!)
for port in $ports; do
  for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
done

# requests per run for a value size: enough to last about a second or more
requests() {
  case $1 in
    3) echo $(( $2 == 1 ? 100000 : 1000000 )) ;;
    65536) echo $(( $2 == 1 ? 20000 : 40000 )) ;;
    *) echo $(( $2 == 1 ? 2000 : 4000 )) ;;
  esac
}

rps() { # port test pipeline size n
  redis-benchmark -p "$1" -t "$2" -P "$3" -d "$4" -n "$5" -c "$CLIENTS" --csv 2>/dev/null \
    | awk -F'"' -v t="$(echo "$2" | tr a-z A-Z)" '$2 == t { print $4 }'
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "# redis-benchmark -c $CLIENTS, median of $REPS alternating runs, $(date -u +%Y-%m-%d), $(nproc) cores"
echo "# redis: $(redis-server --version | awk '{print $3}'); tidepool: $($BIN --version)"
if [ -n "$BASE" ]; then
  echo "# base: $BASE ($($BASE --version))"
  printf '| %-4s | %-3s | %-8s | %14s | %14s | %6s | %14s | %9s |\n' test P size "tidepool op/s" "redis op/s" ratio "base op/s" "this/base"
  printf '|------|-----|----------|----------------|----------------|--------|----------------|-----------|\n'
else
  printf '| %-4s | %-3s | %-8s | %14s | %14s | %6s |\n' test P size "tidepool op/s" "redis op/s" ratio
  printf '|------|-----|----------|----------------|----------------|--------|\n'
fi
for size in 3 65536 1048576; do
  for p in 1 16; do
    for t in set get; do
      n=$(requests $size $p)
      tp=(); rd=(); bs=()
      for _ in $(seq "$REPS"); do
        tp+=("$(rps $TP_PORT $t $p $size $n)")
        rd+=("$(rps $RD_PORT $t $p $size $n)")
        [ -z "$BASE" ] || bs+=("$(rps $BASE_PORT $t $p $size $n)")
      done
      mt=$(printf '%s\n' "${tp[@]}" | median)
      mr=$(printf '%s\n' "${rd[@]}" | median)
      ratio=$(awk -v a="$mt" -v b="$mr" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
      if [ -n "$BASE" ]; then
        mb=$(printf '%s\n' "${bs[@]}" | median)
        vs=$(awk -v a="$mt" -v b="$mb" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        printf '| %-4s | %-3s | %-8s | %14s | %14s | %6s | %14s | %9s |\n' "$t" "$p" "$size" "$mt" "$mr" "$ratio" "$mb" "$vs"
      else
        printf '| %-4s | %-3s | %-8s | %14s | %14s | %6s |\n' "$t" "$p" "$size" "$mt" "$mr" "$ratio"
      fi
    done
  done
done
