"""Everyday redis-py client code against a running tidepool-server.

Usage: python3 redis_py_client.py PORT. Exits non-zero (an AssertionError
or a redis error with its traceback) when the server answers otherwise than
a Redis user expects.
"""

import sys

import redis


def main(port: int) -> None:
    r = redis.Redis(port=port)
    r.flushall()

    # redis-py's pipeline() is transactional by default: MULTI ... EXEC.
    pipe = r.pipeline()
    pipe.set("a", b"1")
    pipe.set("b", b"2")
    pipe.get("a")
    pipe.exists("a", "b", "nope")
    assert pipe.execute() == [True, True, b"1", 2]

    # A failing command inside: its error comes back in place (raised by
    # default), and the commands around it ran.
    pipe = r.pipeline()
    pipe.set("c", b"3")
    pipe.execute_command("KV.PUT", "d", b"4", "PARENT", "nope")
    pipe.get("c")
    out = pipe.execute(raise_on_error=False)
    assert out[0] is True and out[2] == b"3", out
    assert isinstance(out[1], redis.ResponseError) and str(out[1]).startswith("NOPARENT"), out

    # A command the server cannot queue aborts the whole transaction.
    pipe = r.pipeline()
    pipe.set("e", b"5")
    pipe.execute_command("NOSUCHCOMMAND")
    try:
        pipe.execute()
        raise AssertionError("EXEC ran a transaction with an unknown command")
    except redis.ResponseError:
        pass
    assert r.exists("e") == 0

    # A non-transactional pipeline is plain pipelining.
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"k{i}", i)
    assert all(pipe.execute())
    assert r.get("k99") == b"99"

    # WATCH is refused before anything runs: the client sees the error.
    with r.pipeline() as pipe:
        try:
            pipe.watch("a")
            raise AssertionError("WATCH was accepted")
        except redis.ResponseError as e:
            assert "WATCH is not supported" in str(e), e

    # RESP3 connections too.
    r3 = redis.Redis(port=port, protocol=3)
    pipe = r3.pipeline()
    pipe.set("f", b"6")
    pipe.get("f")
    assert pipe.execute() == [True, b"6"]

    # Everyday string commands.
    assert r.setex("s", 100, b"v") is True
    assert 99 <= r.ttl("s") <= 100
    assert r.psetex("p", 100000, b"w") is True
    assert r.setnx("s", b"other") is False
    assert r.setnx("n", b"new") is True
    assert r.getdel("n") == b"new" and r.exists("n") == 0
    assert r.getex("s", persist=True) == b"v" and r.ttl("s") == -1
    assert r.time()[0] > 1_700_000_000
    try:
        r.incr("counter")
        raise AssertionError("INCR was accepted")
    except redis.ResponseError as e:
        assert "not counters" in str(e), e

    # The slow log, as an operator reads it.
    r.config_set("slowlog-log-slower-than", 0)
    r.set("slow", b"x")
    entries = r.slowlog_get(5)
    assert entries and all("id" in e and "duration" in e and "command" in e for e in entries), entries
    assert any(e["command"] == b"SET slow x" for e in entries), entries
    assert r.slowlog_len() >= 1
    r.config_set("slowlog-log-slower-than", 10000)
    assert r.slowlog_reset() is True

    # MONITOR through redis-py's Monitor: it sees another client's command.
    with r.monitor() as m:
        other = redis.Redis(port=port)
        other.set("watched-by-monitor", b"1")
        for event in m.listen():
            if "watched-by-monitor" in event["command"]:
                assert event["command"] == "SET watched-by-monitor 1", event
                break

    # INFO as dashboards read it.
    info = r.info("all")
    assert info["role"] == "master" and "used_memory" in info and "cmdstat_set" in info, info.keys()

    print("redis-py client checks passed")


if __name__ == "__main__":
    main(int(sys.argv[1]))
