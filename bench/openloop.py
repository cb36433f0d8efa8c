"""Open-loop HTTP load: GET requests sent on a fixed schedule (RATE a second) whatever the answers,
each with a client timeout, so a stall cannot hide behind a client that stopped sending (wrk's
connections each wait for their answer before the next request: a closed loop).

Each request is due at `start + i / rate`; it goes out on an idle keep-alive connection, or a new
one if none is idle (so a stalled connection never delays the next request). Its latency counts
from when it was *due* (a late client is charged, not forgiven: no coordinated omission). A
request not fully answered within `timeout` of its due time is a failure (`timeout`: a hung
connection), and so is a refused, reset or closed connection or a non-2xx answer. Nothing is
retried.

    python -m bench.openloop URL --rate 400 --timeout 2 --out samples.json   (until SIGINT/SIGTERM)

writes {"start": epoch, "rate", "timeout", "samples": [[due_ms, latency_ms or -1, outcome], …]}
where outcome is the HTTP status (an int) or one of timeout, refused, reset, closed, error.
With `--post ID_PREFIX` each request is a POST carrying a unique id `ID_PREFIX-<i>` in its
X-Request-Id header, and each sample ends with that id (bench.behaviour counts executions by it).
`OpenLoop` (below) runs it as a subprocess, and `summary` splits the samples into windows."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

# The parent's default: pooled connections idle longer are closed, not reused, as by a client that
# knows the server's keep-alive timeout (the router's `timeout http-keep-alive` is 10 s): reusing one
# the router closed meanwhile would count the client's own mistake as a failure.
MAX_IDLE = 5.0
MAX_CONNECTIONS = 1024  # beyond this, a due request fails at once as "error" (never reached on loopback)


def request_bytes(netloc: str, path: str, post_id: str | None = None) -> bytes:
    """One GET, or a POST with an empty body and its unique id in X-Request-Id."""
    if post_id is None:
        return f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: kiln-bench-openloop\r\n\r\n".encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: kiln-bench-openloop\r\nX-Request-Id: {post_id}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def _drop_stale(conns: list, opened: list[int], max_idle: float | None) -> None:
    """Close the pooled connections idle longer than `max_idle` seconds, as a client that knows the
    server's keep-alive timeout does (a connection the server closed while idle is a failure on reuse).
    The pool is a stack: when its top is stale, so is everything under it."""
    if max_idle is not None and conns and time.time() - conns[-1][2] > max_idle:
        for _, writer, _ in conns:
            writer.close()
            opened[0] -= 1
        conns.clear()


async def _request(conns: list, opened: list[int], host: str, port: int, raw: bytes, due: float, deadline: float,
                   max_idle: float | None = None) -> tuple[float, object]:
    reader = writer = None
    try:
        _drop_stale(conns, opened, max_idle)
        if conns:
            reader, writer, _ = conns.pop()
        elif opened[0] >= MAX_CONNECTIONS:
            return -1.0, "error"
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), max(0.001, deadline - time.time()))
            opened[0] += 1

        async def exchange() -> int:
            assert reader is not None and writer is not None
            writer.write(raw)
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, status_line.startswith(b"HTTP/1.0")  # 1.0 closes unless it says keep-alive
            while True:
                line = await reader.readuntil(b"\r\n")
                if line == b"\r\n":
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "connection":
                    close = value.strip().lower() != "keep-alive"
            if length:
                await reader.readexactly(length)
            return status if not close else -status

        status = await asyncio.wait_for(exchange(), max(0.001, deadline - time.time()))
        latency = (time.time() - due) * 1000
        if status > 0:
            conns.append((reader, writer, time.time()))
            reader = writer = None
        return latency, abs(status)
    except asyncio.TimeoutError:
        return -1.0, "timeout"
    except ConnectionRefusedError:
        return -1.0, "refused"
    except ConnectionResetError:
        return -1.0, "reset"
    except (asyncio.IncompleteReadError, BrokenPipeError):
        return -1.0, "closed"
    except (OSError, ValueError, IndexError):
        return -1.0, "error"
    finally:
        if writer is not None:
            opened[0] -= 1
            writer.close()


async def run(url: str, rate: float, timeout: float, stop: asyncio.Event, post: str | None = None,
              max_idle: float | None = None) -> dict:
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    raw = request_bytes(u.netloc, u.path or "/")
    conns: list = []
    opened = [0]
    samples: list[list] = []
    start = time.time()
    pending: set[asyncio.Task] = set()

    async def one(i: int, due: float) -> None:
        rid = f"{post}-{i}" if post is not None else None
        raw_i = raw if rid is None else request_bytes(u.netloc, u.path or "/", rid)
        latency, outcome = await _request(conns, opened, host, port, raw_i, due, due + timeout, max_idle)
        samples.append([round((due - start) * 1000, 3), round(latency, 3), outcome, *([rid] if rid else [])])

    i = 0
    while not stop.is_set():
        due = start + i / rate
        wait = due - time.time()
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                break
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    if pending:
        await asyncio.wait(pending, timeout=timeout + 1)
    samples.sort()
    return {"start": start, "rate": rate, "timeout": timeout, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=400.0, help="requests a second (default 400)")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds from a request's due time (default 2)")
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long at most (default 600)")
    ap.add_argument("--out", required=True, help="JSON file for the samples")
    ap.add_argument("--post", default=None, metavar="ID_PREFIX", help="send POSTs, each with X-Request-Id ID_PREFIX-<i>")
    ap.add_argument("--max-idle", type=float, help="close, not reuse, a connection idle this many seconds (default: reuse any)")
    args = ap.parse_args(argv)

    async def go() -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.call_later(args.seconds, stop.set)
        return await run(args.url, args.rate, args.timeout, stop, args.post, args.max_idle)

    result = asyncio.run(go())
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, args.out)
    return 0


# --- the parent's side ------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def window(samples: list[list], lo_ms: float, hi_ms: float) -> dict:
    """Figures for the requests due in [lo_ms, hi_ms) (ms from the load's start)."""
    rows = [s for s in samples if lo_ms <= s[0] < hi_ms]
    ok = [s[1] for s in rows if isinstance(s[2], int) and 200 <= s[2] < 300]
    answered = [s[1] for s in rows if isinstance(s[2], int)]
    kinds: dict[str, int] = {}
    for s in rows:
        if not (isinstance(s[2], int) and 200 <= s[2] < 300):
            key = s[2] if isinstance(s[2], str) else "non_2xx"
            kinds[key] = kinds.get(key, 0) + 1
    return {"sent": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "timeouts": kinds.get("timeout", 0),
            "failures": kinds, "p50_ms": _pct(answered, 0.5), "p99_ms": _pct(answered, 0.99),
            "max_ms": round(max(answered), 2) if answered else None}


class OpenLoop:
    """bench.openloop in a subprocess, from now until stop()."""

    def __init__(self, url: str, rate: float = 400.0, timeout: float = 2.0, out: Path | None = None,
                 post: str | None = None, max_idle: float | None = MAX_IDLE) -> None:
        import tempfile
        self.out = out or Path(tempfile.mkstemp(prefix="kiln-openloop-", suffix=".json")[1])
        self.rate, self.timeout = rate, timeout
        self.started = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.openloop", url, "--rate", str(rate),
                                      "--timeout", str(timeout), "--out", str(self.out),
                                      *(["--post", post] if post else []),
                                      *(["--max-idle", str(max_idle)] if max_idle is not None else [])],
                                     cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"bench.openloop exited {self.proc.returncode}: {err[-2000:]}")
        data = json.loads(self.out.read_text())
        self.out.unlink(missing_ok=True)
        return data


def under_open_load(url: str, action, before: float = 2.0, after: float = 1.0, rate: float = 400.0,
                    timeout: float = 2.0) -> tuple[dict, object]:
    """Open-loop load from `before` seconds ahead of `action` until `after` seconds past it; the
    requests due before the action are the steady state, those due from its start on the change."""
    load = OpenLoop(url, rate, timeout)
    time.sleep(before)
    began = time.time()
    try:
        outcome = action()
    finally:
        ended = time.time()
        time.sleep(after)
        data = load.stop()
    start = data["start"]
    steady = window(data["samples"], 0, (began - start) * 1000)
    change = window(data["samples"], (began - start) * 1000, float("inf"))
    return {"rate": rate, "timeout_s": timeout, "change_window_s": round(ended - began + after, 2),
            "steady": steady, "change": change, "failed": change["failed"] + steady["failed"]}, outcome


if __name__ == "__main__":
    sys.exit(main())
