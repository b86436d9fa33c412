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

    print("redis-py client checks passed")


if __name__ == "__main__":
    main(int(sys.argv[1]))
