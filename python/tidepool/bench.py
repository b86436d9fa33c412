"""Python client against the Rust client, in one run: block put and get
GB/s over each data plane, and KV.MATCH latency.

    tidepool-server &          # a server on this host (shm and tcp planes)
    python -m tidepool.bench --addr 127.0.0.1:6379

The Rust figures come from the same tidepool-client the Python methods
call, timed in Rust inside this process (`tidepool._tidepool._RustBench`,
a long-lived client as the Python one is),
so the ratio is what the Python layer costs: argument parsing, exporting
buffers, releasing the GIL, converting results. Runs alternate Python and
Rust; each cell is the median of `--runs`. Build the package optimized
(`pip install ./python`) before quoting figures.
"""

import argparse
import os
import statistics
import time

import tidepool
from tidepool import _tidepool


def size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib").rstrip("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def human(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# Each side's first round is not timed, so both time warm buffers.


def py_put(client, values, batch, rounds):
    out = []
    for r in range(rounds + 1):
        keys = [f"py-bench-{os.getpid()}-{r}-{i}" for i in range(len(values))]
        pairs = list(zip(keys, values))
        t = time.perf_counter()
        for i in range(0, len(pairs), batch):
            for res in client.put_many(pairs[i : i + batch]):
                if res is not None:
                    raise res
        if r > 0:
            out.append(time.perf_counter() - t)
        client.delete(keys)
    return out


def py_get(client, values, batch, rounds):
    keys = [f"py-bench-{os.getpid()}-get-{i}" for i in range(len(values))]
    client.put_many(list(zip(keys, values)))
    bufs = [bytearray(len(v)) for v in values]
    out = []
    for r in range(rounds + 1):
        t = time.perf_counter()
        for i in range(0, len(keys), batch):
            got = client.get_many_into(keys[i : i + batch], bufs[i : i + batch])
            if any(g != len(values[0]) for g in got):
                raise RuntimeError("a block went missing")
        if r > 0:
            out.append(time.perf_counter() - t)
    client.delete(keys)
    return out


def py_match(client, chain, rounds):
    keys = [f"py-bench-{os.getpid()}-match-{i}" for i in range(chain)]
    client.put_chain([(k, b"m") for k in keys])
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        m = client.match_prefix(keys)
        out.append(time.perf_counter() - t)
        if m.matched != chain:
            raise RuntimeError("the chain went missing")
    client.delete(keys[:1])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default=os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379"))
    ap.add_argument("--planes", default="shm,tcp")
    ap.add_argument("--sizes", default="64KiB,1MiB,4MiB", help="block sizes")
    ap.add_argument("--total", default="256MiB", help="bytes moved per round")
    ap.add_argument("--batch", default="32MiB", help="bytes per call")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chain", type=int, default=256, help="keys per KV.MATCH")
    ap.add_argument("--matches", type=int, default=2000, help="KV.MATCH calls per side")
    a = ap.parse_args(argv)
    total, batch_bytes = size(a.total), size(a.batch)
    print(f"tidepool {tidepool.__version__} python bench against {a.addr}; medians of {a.runs} runs")
    print()
    print("| plane | block | op | python GB/s | rust GB/s | python / rust |")
    print("|---|---|---|---|---|---|")
    for plane in a.planes.split(","):
        client = tidepool.Client(a.addr, plane=plane)
        rust = _tidepool._RustBench(a.addr, plane)
        for block in [size(s) for s in a.sizes.split(",")]:
            blocks = max(1, total // block)
            batch = max(1, batch_bytes // block)
            values = [bytes([i % 251]) * block for i in range(blocks)]
            for op, fn in (("put", py_put), ("get", py_get)):
                py_t, rust_t = [], []
                for _ in range(a.runs):  # alternate, so drift hits both
                    py_t += fn(client, values, batch, 1)
                    rust_t += rust.run(op, block, blocks, batch, 1)
                moved = blocks * block
                p = moved / statistics.median(py_t) / 1e9
                r = moved / statistics.median(rust_t) / 1e9
                print(f"| {plane} | {human(block)} | {op} | {p:.2f} | {r:.2f} | {p / r:.0%} |")
        client.close()
    client = tidepool.Client(a.addr)
    rust = _tidepool._RustBench(a.addr, "auto")
    py_m, rust_m = [], []
    for _ in range(a.runs):
        py_m += py_match(client, a.chain, a.matches // a.runs)
        rust_m += rust.run("match", 1, a.chain, 1, a.matches // a.runs)
    client.close()

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6

    print()
    print(f"KV.MATCH of {a.chain} keys, {len(py_m)} calls each:")
    print()
    print("| client | p50 µs | p99 µs |")
    print("|---|---|---|")
    print(f"| python | {pct(py_m, 0.5):.0f} | {pct(py_m, 0.99):.0f} |")
    print(f"| rust | {pct(rust_m, 0.5):.0f} | {pct(rust_m, 0.99):.0f} |")


if __name__ == "__main__":
    main()
