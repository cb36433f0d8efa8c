"""Long-lived connections across a deploy, and 50 replicas on one host (a real run).

    python -m bench.longlived [--quick] [--only streams,replicas50] [--note "..."]

`streams`: a bench-only variant of examples/hello (GET /events: a server-sent event stream, one
`data: <n>` event every 100 ms, each its own HTTP chunk, flushed; POST /upload: reads the body and
answers 200 with its byte count), drain_timeout 5 s, through kiln's router. Per run: (a) 10 SSE
streams open, then a rolling `kiln deploy`: when kiln began draining each stream's instance and
removed it from the router (`kiln rollout show --json`), when and how the stream ended (FIN or
reset, at an event boundary or not, the chunked terminator or not), events received; (b) slow
uploads (~100 KB/s): 5 of ~200 KB (about 2 s) timed to be in flight when the drain begins, and 2 of
~1 MB (about 10 s, longer than drain_timeout) started before the deploy: status and byte count.

`replicas50`: 50 replicas of examples/hello on this host: the first deploy, `kiln status` time,
then rolling deploys (max_surge 100% and 10%) under wrk and under open loop: deploy time, step
timings, failed requests, peak containers and host memory.

Writes bench/results/longlived.{md,json}."""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import (
    RESULTS,
    BenchApp,
    engine,
    guarded,
    heavy,
    log,
    median,
    remove_images,
    under_load,
)
from bench.openloop import OpenLoop, window
from bench.timing import milestones

DRAIN_TIMEOUT = 5.0
STREAMS = 10
EVENT_EVERY = 0.1

# The bench-only variant of examples/hello (as bench/timing.py builds its TCP_NODELAY one): two
# handlers inserted ahead of do_GET. Each event is one chunk written and flushed at once, so a
# client sees whole events unless something between cuts one.
SSE_APP = ("    def do_GET(self):\n", '''    def _events(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(f": instance={INSTANCE}\\n\\n")
        n = 0
        try:
            while True:  # forever: only the connection's end stops it
                n += 1
                self._chunk(f"data: {n}\\n\\n")
                time.sleep(0.1)
        except OSError:
            self.close_connection = True

    def _chunk(self, text):
        data = text.encode()
        self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        if self.path != "/upload":
            return self._send(404, "no\\n")
        left, got = int(self.headers.get("Content-Length", "0")), 0
        while left > 0:
            block = self.rfile.read(min(65536, left))
            if not block:
                break
            got, left = got + len(block), left - len(block)
        self._send(200, f"{got} {INSTANCE}\\n")

    def do_GET(self):
        if self.path == "/events":
            return self._events()
''')
IMPORT_TIME = ("import threading\n", "import threading\nimport time\n")


def make_sse_app(root: Path) -> BenchApp:
    app = BenchApp.make(root, "klongsse", replicas=2)
    path = app.dir / "app.py"
    text = path.read_text()
    for old, new in (IMPORT_TIME, SSE_APP):
        if old not in text:
            raise ValueError(f"{old!r} not in examples/hello/app.py")
        text = text.replace(old, new, 1)
    path.write_text(text)

    def change(data: dict) -> None:
        data["services"]["web"]["drain_timeout"] = f"{DRAIN_TIMEOUT:g}s"
    app.edit_spec(change)
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    return app


# --- clients --------------------------------------------------------------------------------------


class Stream(threading.Thread):
    """One SSE client on a raw socket: parses the chunked body, records every event's arrival and
    how the connection ended."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.instance = ""
        self.events: list[int] = []
        self.opened = self.last_event_at = self.ended = 0.0
        self.end = ""  # fin | reset | timeout | error: ...
        self.terminator = False  # the chunked body's last-chunk (the server ended it on purpose)
        self.torn = ""  # bytes left over that are not a whole event or chunk
        self.status = 0

    def run(self) -> None:
        self.opened = time.time()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.settimeout(30)  # well past drain_timeout: a hung stream is reported as one
            sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
            self._read(sock)
        except ConnectionResetError:
            self.end = "reset"
        except TimeoutError:
            self.end = "timeout"
        except OSError as exc:
            self.end = f"error: {exc}"
        self.ended = time.time()

    def _read(self, sock: socket.socket) -> None:
        buf, body, head = b"", b"", True
        while True:
            data = sock.recv(65536)
            if not data:
                self.end = "fin"
                break
            buf += data
            if head:
                if b"\r\n\r\n" not in buf:
                    continue
                header, buf = buf.split(b"\r\n\r\n", 1)
                self.status = int(header.split(b" ", 2)[1])
                head = False
            buf, more, done = _dechunk(buf)
            body += more
            body = self._events_in(body)
            if done:
                self.terminator = True
        self.torn = (buf + body).decode("latin-1")[:200]

    def _events_in(self, body: bytes) -> bytes:
        while b"\n\n" in body:
            event, body = body.split(b"\n\n", 1)
            line = event.decode()
            if line.startswith(": instance="):
                self.instance = line.split("=", 1)[1]
            elif line.startswith("data: "):
                self.events.append(int(line[6:]))
                self.last_event_at = time.time()
        return body

    def row(self) -> dict:
        gaps = [b - a for a, b in zip(self.events, self.events[1:], strict=False)]
        return {"instance": self.instance, "status": self.status, "opened": self.opened, "ended": self.ended,
                "end": self.end or "open", "chunked_terminator": self.terminator, "torn": self.torn,
                "events": len(self.events), "missing_or_repeated": sum(1 for g in gaps if g != 1),
                "last_event_at": self.last_event_at}


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _dechunk(buf: bytes) -> tuple[bytes, bytes, bool]:
    """Whole chunks out of `buf`: (what is left, their data, whether the last-chunk came)."""
    out = b""
    while b"\r\n" in buf:
        size_line, rest = buf.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return rest, out, True
        if len(rest) < size + 2:
            break
        out, buf = out + rest[:size], rest[size + 2:]
    return buf, out, False


class Upload(threading.Thread):
    """POST /upload of `size` bytes sent at `rate` bytes a second (10 pieces a second)."""

    def __init__(self, port: int, size: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.port, self.size, self.rate = port, size, rate
        self.sent = 0
        self.started = self.ended = 0.0
        self.status = 0
        self.answer = ""
        self.outcome = ""

    def run(self) -> None:
        self.started = time.time()
        piece = self.rate // 10
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.settimeout(30)
            sock.sendall(f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {self.size}\r\n"
                         "Content-Type: application/octet-stream\r\n\r\n".encode())
            while self.sent < self.size:
                if select.select([sock], [], [], 0)[0]:
                    # Something came back before the body was all sent: an early answer, or the
                    # connection's end (FIN: recv gives b"", reset: an exception).
                    self._answer(sock, early=True)
                    break
                n = min(piece, self.size - self.sent)
                sock.sendall(b"x" * n)
                self.sent += n
                time.sleep(n / self.rate)
            else:
                self._answer(sock)
        except (ConnectionResetError, BrokenPipeError) as exc:
            self.outcome = f"reset ({type(exc).__name__}) after {self.sent:,} bytes sent"
        except TimeoutError:
            self.outcome = f"timeout after {self.sent:,} bytes sent"
        except OSError as exc:
            self.outcome = f"error ({exc}) after {self.sent:,} bytes sent"
        self.ended = time.time()

    def _answer(self, sock: socket.socket, early: bool = False) -> None:
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            more = sock.recv(65536)
            if not more:
                break
            data += more
        if not data:
            self.outcome = f"closed without an answer (FIN) after {self.sent:,} bytes sent"
            return
        self.status = int(data.split(b" ", 2)[1])
        self.answer = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        self.outcome = f"answered {self.status} before the body was sent ({self.sent:,} bytes)" if early else "answered"

    def row(self) -> dict:
        counted = int(self.answer.split()[0]) if self.answer[:1].isdigit() else None
        return {"size": self.size, "rate_bps": self.rate, "started": self.started, "ended": self.ended,
                "seconds": round(self.ended - self.started, 2), "sent": self.sent, "status": self.status,
                "bytes_counted": counted, "instance": self.answer.split()[1] if counted is not None else "",
                "outcome": self.outcome,
                "ok": self.status == 200 and counted == self.size}


# --- streams group ---------------------------------------------------------------------------------


def _epoch(text: str) -> float:
    """The ledger's timestamps are UTC without a zone."""
    at = datetime.fromisoformat(text.rstrip("Z"))
    return at.replace(tzinfo=at.tzinfo or UTC).timestamp()


def drains(show: dict) -> dict[str, dict]:
    """Instance -> when its Unroute step began (drain state set) and ended (removed from the
    router after its sessions were cut), and the Remove step's end (container stopped)."""
    out: dict[str, dict] = {}
    for step in show.get("steps", []):
        if step["action"] in ("Unroute", "Remove") and step["state"] in ("started", "done"):
            key = {("Unroute", "started"): "drain_began", ("Unroute", "done"): "unrouted",
                   ("Remove", "started"): "stop_began", ("Remove", "done"): "removed"}[(step["action"], step["state"])]
            out.setdefault(step["target"], {})[key] = _epoch(step["at"])
            if key == "unrouted":
                out[step["target"]]["detail"] = step.get("detail", "")
    return out


def _new_release(app: BenchApp, label: str) -> None:
    """A new release, baked ahead so the deploy's time is the rollout's."""
    app.set_message(label)
    app.image_tag()


def stream_run(app: BenchApp, run: int, notes: list[str]) -> dict:
    """10 SSE streams open through the router, then a rolling deploy replaces their instances."""
    streams = [Stream(app.port) for _ in range(STREAMS)]
    with heavy(f"longlived: streams run {run}"):
        ensure_serving(app, 2, notes)
        _new_release(app, f"streams {run}")
        engine_before = dockerd()
        for s in streams:
            s.start()
        time.sleep(1.0)
        began = time.time()
        deploy = app.kiln("deploy")
        show = app.kiln_json("rollout", "show")
        for s in streams:
            s.join(timeout=DRAIN_TIMEOUT + 40)
    by_instance = drains(show)
    rows = []
    for s in streams:
        row = s.row()
        d = by_instance.get(row["instance"], {})
        row.update({k: d.get(k) for k in ("drain_began", "unrouted", "removed")})
        if d.get("drain_began") and row["end"] != "open":
            row["open_after_drain_began_s"] = round(row["ended"] - d["drain_began"], 2)
            row["ended_after_unrouted_s"] = round(row["ended"] - d["unrouted"], 3) if d.get("unrouted") else None
        row["at_event_boundary"] = not row["torn"]
        row["clean"] = row["end"] == "fin" and not row["torn"] and row["missing_or_repeated"] == 0
        rows.append(row)
    out = {"run": run, "deploy_seconds": round(deploy.seconds, 2), "deploy_began": began,
           "drains": by_instance, "streams": rows, "disturbed": disturbed(engine_before)}
    log(f"streams run {run}: ends {[r['end'] for r in rows]}, open after drain began "
        f"{[r.get('open_after_drain_began_s') for r in rows]}")
    return out


def upload_run(app: BenchApp, run: int, quick: bool, notes: list[str]) -> dict:
    """Slow uploads across a rolling deploy: 2 long ones (~10 s, longer than drain_timeout) started
    just before the deploy, and 5 short ones (~2 s) started when the deploy prints that it started
    its first new instance: the old instances are the only ones routed then, and their drain
    begins once the new ones pass their checks (about 1-2 s later), so the short uploads are in
    flight on a draining instance."""
    rate = 100 * 1024
    short = [Upload(app.port, 200 * 1024, rate) for _ in range(5)]
    long = [Upload(app.port, (4 if quick else 10) * rate, rate) for _ in range(2)]
    with heavy(f"longlived: uploads run {run}"):
        ensure_serving(app, 2, notes)
        _new_release(app, f"uploads {run}")
        engine_before = dockerd()
        for u in long:
            u.start()
        time.sleep(0.3)
        began = time.time()
        proc = app.popen("deploy")
        said: list[str] = []
        fired = False
        for line in proc.stderr or []:
            said.append(line)
            if not fired and "started kiln-" in line:
                fired = True
                for u in short:
                    u.start()
        code = proc.wait()
        seconds = time.time() - began
        if code != 0 or not fired:
            raise RuntimeError(f"kiln deploy exited {code} (short uploads started: {fired}): "
                               f"{''.join(said)[-2000:]}")
        for u in short + long:
            u.join(timeout=60)
    show = app.kiln_json("rollout", "show")
    by_instance = drains(show)
    first_drain = min((d["drain_began"] for d in by_instance.values() if "drain_began" in d), default=None)

    def row(u: Upload, kind: str) -> dict:
        r = {"kind": kind, **u.row()}
        d = by_instance.get(r["instance"], {})
        r["on_drained_instance"] = bool(d)
        if first_drain:
            r["started_after_first_drain_s"] = round(u.started - first_drain, 2)
            r["ended_after_first_drain_s"] = round(u.ended - first_drain, 2)
        r["in_flight_at_drain"] = bool(d.get("drain_began") and u.started < d["drain_began"] < u.ended)
        if not r["instance"] and u.started < began and first_drain:
            # Cut before its answer named the instance; started before the deploy, when only old
            # instances were routed, so it was on one of those being drained.
            r["instance"], r["in_flight_at_drain"] = "(old)", u.started < first_drain < u.ended
        return r
    rows = [row(u, "short") for u in short] + [row(u, "long") for u in long]
    log(f"uploads run {run}: {[(r['kind'], r['outcome'], r['bytes_counted']) for r in rows]}")
    return {"run": run, "deploy_seconds": round(seconds, 2), "deploy_began": began,
            "drains": by_instance, "uploads": rows, "disturbed": disturbed(engine_before)}


def streams_group(root: Path, runs: int, quick: bool, r: dict) -> None:
    app = make_sse_app(root)
    r["streams"] = {"drain_timeout_s": DRAIN_TIMEOUT, "streams": STREAMS, "runs": []}
    try:
        with heavy("longlived: first deploy of the SSE app"):
            app.kiln("deploy")
        for run in range(1, runs + 1):
            s = stream_run(app, run, r["notes"])
            u = upload_run(app, run, quick, r["notes"])
            r["streams"]["runs"].append({"streams": s, "uploads": u})
    finally:
        destroy(app)


def destroy(app: BenchApp) -> None:
    """`kiln destroy`, then whatever of this app is left (only its own containers: other jobs'
    bench containers carry the same kiln.test label), and its images."""
    with heavy(f"longlived: cleanup of {app.name}"):
        done = app.kiln("destroy", "-e", "production", check=False, timeout=600)
        if done.returncode != 0:
            log(f"kiln destroy of {app.name} exited {done.returncode}: {done.stderr[-500:]}")
        for c in app.containers():
            log(f"left after kiln destroy, removed: {c.name}")
            c.remove(force=True, v=True)
        for n in engine().networks.list(filters={"label": f"kiln.app={app.name}"}):
            n.remove()
        remove_images([f"kiln/{app.name}"], [])


# --- replicas50 group ------------------------------------------------------------------------------

REPLICAS = 50
MEMORY_LIMIT = "64M"  # hello's python3 uses ~15 MiB; 64M leaves room and keeps 100 limits under the host's RAM


def host_used_mib() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) / 1024


class Peaks(threading.Thread):
    """Samples the app's containers (all states) and the host's used memory every 0.5 s."""

    def __init__(self, app: BenchApp) -> None:
        super().__init__(daemon=True)
        self.app, self.stop_at = app, threading.Event()
        self.containers = self.instances = 0
        self.memory_mib = 0.0

    def run(self) -> None:
        client = engine()
        while not self.stop_at.is_set():
            found = client.containers.list(all=True, sparse=True, filters={"label": f"kiln.app={self.app.name}"})
            self.containers = max(self.containers, len(found))
            self.memory_mib = max(self.memory_mib, host_used_mib())
            self.stop_at.wait(0.5)

    def stop(self) -> dict:
        self.stop_at.set()
        self.join(timeout=30)
        return {"peak_containers": self.containers, "peak_host_memory_used_mib": round(self.memory_mib)}


def step_stats(show: dict) -> dict:
    """Per kind of step: how many, median and slowest duration (s), and when the last one was done
    (s from the rollout's start, bench.timing.milestones)."""
    by: dict[str, list[float]] = {}
    for step in show.get("steps", []):
        if step["state"] == "done" and step.get("seconds") is not None and step["action"] != "Phase":
            by.setdefault(step["action"], []).append(step["seconds"])
    last = milestones(show)
    return {k: {"count": len(v), "median_s": round(median(v), 3), "max_s": round(max(v), 3), "last_done_at_s": last.get(k)}
            for k, v in by.items()}


def dockerd() -> tuple[str, str]:
    """dockerd's pid and start time (clock ticks since boot): another job may restart it, which
    stops every container (no live-restore here)."""
    pid = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    if not pid:
        return ("", "")
    stat = Path(f"/proc/{pid[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (pid[0], stat[19])


def disturbed(before: tuple[str, str]) -> str:
    """Why a measurement does not count, if it does not: dockerd restarted (by other work) meanwhile."""
    return "" if dockerd() == before else "dockerd was restarted (by other work on the machine) during the measurement"


def ensure_serving(app: BenchApp, replicas: int, notes: list[str]) -> None:
    """Before a measured change: the app answers through its router with all its instances. If
    not (something outside removed or stopped them), say what was found and deploy to restore it."""
    mine = [(c.name, c.status) for c in app.containers()]
    try:
        with urllib.request.urlopen(app.url, timeout=3) as resp:
            answered = resp.status == 200
    except OSError as exc:
        answered, mine = False, [*mine, ("GET", str(exc))]
    if answered and len(mine) == replicas + 1 and all(st == "running" for _, st in mine):
        return
    notes.append(f"{app.name} was not intact before a measured change (found: {mine[:6]}{' …' if len(mine) > 6 else ''}; "
                 f"{len(mine)} entries); restored by `kiln deploy` before measuring.")
    log(notes[-1])
    app.kiln("deploy", timeout=900)


def open_loop_deploy(app: BenchApp, before: float = 2.0, after: float = 1.0) -> tuple[dict, object, dict]:
    """bench.openloop.under_open_load's figures, keeping the samples (to place failures in time)."""
    load = OpenLoop(app.url)
    time.sleep(before)
    began = time.time()
    try:
        run = app.kiln("deploy", timeout=900)
    finally:
        ended = time.time()
        time.sleep(after)
        data = load.stop()
    lo = (began - data["start"]) * 1000
    steady, change = window(data["samples"], 0, lo), window(data["samples"], lo, float("inf"))
    figures = {"rate": load.rate, "timeout_s": load.timeout, "change_window_s": round(ended - began + after, 2),
               "steady": steady, "change": change, "failed": steady["failed"] + change["failed"]}
    return figures, run, data


def failure_timeline(data: dict, show: dict) -> list[dict]:
    """Per second of the rollout that had a failed request: failures by kind (by due time) and the
    steps that ended in that second, so a failure can be set beside what kiln was doing."""
    t0 = _epoch(show["started_at"]) if show.get("started_at") else data["start"]
    rows: dict[int, dict] = {}
    for due_ms, _latency, outcome in data["samples"]:
        if isinstance(outcome, int) and 200 <= outcome < 300:
            continue
        second = int(data["start"] + due_ms / 1000 - t0)
        kinds = rows.setdefault(second, {"second": second, "failures": {}, "steps_done": {}})["failures"]
        kinds[str(outcome)] = kinds.get(str(outcome), 0) + 1
    for step in show.get("steps", []):
        second = int(_epoch(step["at"]) - t0)
        if step["state"] == "done" and second in rows:
            done = rows[second]["steps_done"]
            done[step["action"]] = done.get(step["action"], 0) + 1
    return [rows[k] for k in sorted(rows)]


def replicas_deploy(app: BenchApp, surge: str, load: str, notes: list[str]) -> dict:
    """A rolling deploy of a new release over 50 instances under wrk or open-loop load."""
    peaks = Peaks(app)
    with heavy(f"longlived: 50 replicas, max_surge {surge}, {load}"):
        ensure_serving(app, REPLICAS, notes)
        app.set_rollout(strategy="rolling", max_surge=surge, max_unavailable=0)
        _new_release(app, f"fifty {surge} {load}")
        engine_before = dockerd()
        before, loadavg = host_used_mib(), open("/proc/loadavg").read().split()[:3]
        peaks.start()
        try:
            if load == "wrk":
                figures, run = under_load(app.url, lambda: app.kiln("deploy", timeout=900))
                figures = figures.row()
            else:
                figures, run, samples = open_loop_deploy(app)
        finally:
            peak = peaks.stop()
        upset = disturbed(engine_before)
    show = app.kiln_json("rollout", "show")
    if load != "wrk":
        figures["timeline"] = failure_timeline(samples, show)
    st = app.kiln_json("status")
    serving = sum(1 for i in st.get("instances", []) if i["health"] == "healthy" and i["in_router"])
    out = {"max_surge": surge, "load": load, "deploy_seconds": round(run.seconds, 2), "failed": figures["failed"],
           "loadavg_before": loadavg, "loadavg_after": open("/proc/loadavg").read().split()[:3],
           "load_figures": figures, "rollout_state": show.get("state"), "steps": step_stats(show),
           "host_memory_used_before_mib": round(before), **peak, "serving_after": serving, "disturbed": upset}
    log(f"50 replicas, max_surge {surge}, {load}: {out['deploy_seconds']} s, {out['failed']} failed, "
        f"peak {peak['peak_containers']} containers, {peak['peak_host_memory_used_mib']} MiB used")
    return out


def stale_keepalive(url: str, idle: float = 11.0) -> dict:
    """What bench.openloop meets when it reuses a keep-alive connection that sat idle longer than the
    router's `timeout http-keep-alive` (10 s): one GET, `idle` seconds of silence, a second GET on the
    same connection."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        first = sock.recv(65536).split(b"\r\n", 1)[0].decode()
        time.sleep(idle)
        try:
            sock.sendall(request)
            again = sock.recv(65536)
            second = again.split(b"\r\n", 1)[0].decode() if again else "closed (FIN: the router had closed it)"
        except OSError as exc:
            second = f"{type(exc).__name__}"
    return {"idle_s": idle, "first": first, "second": second}


def replicas_group(root: Path, quick: bool, r: dict) -> None:
    app = BenchApp.make(root, "klong50", replicas=REPLICAS)

    def change(data: dict) -> None:
        data["services"]["web"]["resources"] = {"memory": MEMORY_LIMIT}
    app.edit_spec(change)
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    out: dict = {"replicas": REPLICAS, "memory_limit": MEMORY_LIMIT, "deploys": []}
    r["replicas50"] = out
    try:
        app.image_tag()
        peaks = Peaks(app)
        with heavy("longlived: first deploy of 50 replicas"):
            out["host_memory_used_before_mib"] = round(host_used_mib())
            peaks.start()
            try:
                out["first_deploy_seconds"] = round(app.kiln("deploy", timeout=900).seconds, 2)
            finally:
                out["first_deploy"] = peaks.stop()
            out["host_memory_used_serving_mib"] = round(host_used_mib())
            out["kiln_status_seconds"] = [round(app.kiln("status").seconds, 3) for _ in range(3)]
        out["first_deploy_steps"] = step_stats(app.kiln_json("rollout", "show"))
        log(f"50 replicas: first deploy {out['first_deploy_seconds']} s, kiln status {out['kiln_status_seconds']}")
        plan = [("100%", "wrk"), ("25%", "openloop")] if quick else \
            [("100%", "wrk"), ("100%", "openloop"), ("10%", "wrk"), ("10%", "openloop")]
        for surge, load in plan:
            out["deploys"].append(replicas_deploy(app, surge, load, r["notes"]))
        out["stale_keepalive"] = stale_keepalive(app.url)
    finally:
        destroy(app)


# --- judging and the report -------------------------------------------------------------------------


def _streams(r: dict) -> list[dict]:
    """Every stream of the runs that count (dockerd not restarted by other work meanwhile)."""
    return [s for run in r.get("streams", {}).get("runs", []) if not run["streams"].get("disturbed")
            for s in run["streams"]["streams"]]


def _uploads(r: dict, kind: str) -> list[dict]:
    return [u for run in r.get("streams", {}).get("runs", []) if not run["uploads"].get("disturbed")
            for u in run["uploads"]["uploads"] if u["kind"] == kind]


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f} s" if values else "none"


def targets(result: dict) -> list[dict]:
    rows = []
    streams = _streams(result)
    if streams:
        drain = result["streams"]["drain_timeout_s"]
        open_for = [s["open_after_drain_began_s"] for s in streams if s.get("open_after_drain_began_s") is not None]
        clean = sum(1 for s in streams if s["clean"])
        timely = len(open_for) == len(streams) and all(drain - 0.5 <= t <= drain + 1.5 for t in open_for)
        rows.append({"target": f"SSE streams across a rolling deploy stay open ~drain_timeout ({drain:g} s) after the drain "
                               "begins, then close cleanly (FIN, no reset, at an event boundary, no event lost)",
                     "measured": f"{clean} of {len(streams)} clean; open {_span(open_for)} after the drain began; ends: "
                                 + ", ".join(f"{k} {sum(1 for s in streams if s['end'] == k)}" for k in sorted({s['end'] for s in streams})),
                     "met": clean == len(streams) and timely})
    short = _uploads(result, "short")
    if short:
        at_drain = sum(1 for u in short if u["in_flight_at_drain"])
        ok = sum(1 for u in short if u["ok"])
        rows.append({"target": "slow uploads shorter than drain_timeout, in flight across the deploy, all answer 200 "
                               "with the right byte count",
                     "measured": f"{ok} of {len(short)} ({at_drain} of them in flight when their instance's drain began)",
                     "met": ok == len(short) and at_drain > 0})
    uploads = short + _uploads(result, "long")
    if uploads:
        wrong = [u for u in uploads if u["status"] == 200 and not u["ok"]]
        rows.append({"target": "no upload is answered 200 with a wrong byte count (a cut upload fails visibly)",
                     "measured": f"{len(wrong)} of {len(uploads)} answered 200 with a wrong count", "met": not wrong})
    for d in result.get("replicas50", {}).get("deploys", []):
        started = d["steps"].get("Start", {}).get("count", 0)
        said = f"{d['failed']} failed ({_requests(d)} requests); deploy {d['deploy_seconds']:.1f} s, {started} instances " \
               f"started; rollout {d['rollout_state']}, {d['serving_after']} serving after"
        rows.append({"target": f"0 failed requests: rolling deploy of 50 replicas, max_surge {d['max_surge']}, under {d['load']}",
                     "measured": f"not counted ({d['disturbed']}): {said}" if d.get("disturbed") else said,
                     "met": not d.get("disturbed") and d["failed"] == 0 and d["rollout_state"] == "succeeded"
                     and d["serving_after"] == REPLICAS and started == REPLICAS})
    return rows


def _requests(d: dict) -> str:
    f = d["load_figures"]
    return f"{f['requests']:,}" if "requests" in f else f"{f['steady']['sent'] + f['change']['sent']:,} sent"


def _long_said(u: dict) -> str:
    after = u.get("ended_after_first_drain_s")
    return f"{u['outcome']} ({u['seconds']:.1f} s, ended {after:+.2f} s from the first drain)"


def headline(result: dict) -> list[str]:
    out = []
    streams = _streams(result)
    if streams:
        open_for = [s["open_after_drain_began_s"] for s in streams if s.get("open_after_drain_began_s") is not None]
        out.append(f"SSE across a deploy: {sum(1 for s in streams if s['clean'])} of {len(streams)} streams closed cleanly "
                   f"(FIN at an event boundary) {_span(open_for)} after the drain began (drain_timeout "
                   f"{result['streams']['drain_timeout_s']:g} s); {sum(1 for s in streams if s['chunked_terminator'])} "
                   "ended their chunked body (the router cuts them; the app is never asked to end them)")
    short, long = _uploads(result, "short"), _uploads(result, "long")
    if short:
        out.append(f"slow uploads (~2 s) across a deploy: {sum(1 for u in short if u['ok'])} of {len(short)} answered 200 with "
                   f"the right count; uploads longer than drain_timeout: "
                   + "; ".join(sorted({u['outcome'].split(' after ')[0] for u in long})) + f" ({len(long)} uploads)")
    fifty = result.get("replicas50")
    if fifty and fifty.get("deploys"):
        out.append(f"50 replicas on one host: first deploy {fifty.get('first_deploy_seconds')} s, `kiln status` "
                   f"{median(fifty['kiln_status_seconds']):.2f} s; rolling deploys "
                   + "; ".join(f"{d['max_surge']} under {d['load']}: {d['deploy_seconds']:.1f} s, {d['failed']} failed, "
                               f"peak {d['peak_containers']} containers" for d in fifty["deploys"]))
    return out


def _provenance(r: dict) -> str:
    p = r.get("provenance") or {}
    if not p:
        return "Tree state: not recorded."
    return (f"Measured at commit `{p['commit'][:12]}`, "
            + (f"**with a dirty tree** (changed: {', '.join(p['changed'])})." if p["dirty"] else "clean tree."))


def _t(epoch: float | None, zero: float) -> str:
    return f"{epoch - zero:+.2f}" if epoch else "–"


def streams_md(s: dict) -> list[str]:
    lines = ["", "## Long-lived connections across a rolling deploy", "",
             f"examples/hello with GET /events (an event every {EVENT_EVERY * 1000:.0f} ms, one chunk each, flushed) and "
             f"POST /upload, 2 replicas, rolling max_surge 100%, drain_timeout {s['drain_timeout_s']:g} s, through kiln's "
             "router. Times in seconds from the deploy's start; *drain began* is the Unroute step's start (HAProxy "
             "`set server … state drain`), *unrouted* its end (`shutdown sessions` and `del server` done), from "
             "`kiln rollout show --json`. *Clean* = the connection ended with a FIN (no reset), at an event boundary "
             "(nothing torn), no event lost or repeated."]
    for run in s["runs"]:
        st, up = run["streams"], run["uploads"]
        zero = st["deploy_began"]
        lines += ["", f"### Run {st['run']}: {len(st['streams'])} SSE streams, `kiln deploy` {st['deploy_seconds']:.2f} s"
                  + (f" (**not counted**: {st['disturbed']})" if st.get("disturbed") else ""), "",
                  "| stream | instance | drain began | unrouted | stream ended | open after drain began | end | chunked end | torn | events | lost/repeated | clean |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, x in enumerate(st["streams"], 1):
            lines.append(f"| {i} | {x['instance'][-6:]} | {_t(x.get('drain_began'), zero)} | {_t(x.get('unrouted'), zero)} | "
                         f"{_t(x['ended'], zero)} | {x.get('open_after_drain_began_s', '–')} s | {x['end']} | "
                         f"{'yes' if x['chunked_terminator'] else 'no'} | {x['torn']!r} | {x['events']} | "
                         f"{x['missing_or_repeated']} | {'yes' if x['clean'] else '**no**'} |")
        zero = up["deploy_began"]
        lines += ["", f"Slow uploads, `kiln deploy` {up['deploy_seconds']:.2f} s"
                  + (f" (**not counted**: {up['disturbed']})" if up.get("disturbed") else "") + "; drains: "
                  + "; ".join(f"{n[-6:]} began {_t(d.get('drain_began'), zero)}, unrouted {_t(d.get('unrouted'), zero)} "
                              f"({d.get('detail', '')})" for n, d in up["drains"].items()), "",
                  "| upload | bytes | started | ended | instance | in flight at its drain | outcome | status | counted | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for u in up["uploads"]:
            lines.append(f"| {u['kind']} | {u['size']:,} | {_t(u['started'], zero)} | {_t(u['ended'], zero)} | "
                         f"{u['instance'][-6:] or '?'} | {'yes' if u['in_flight_at_drain'] else 'no'} | {u['outcome']} | "
                         f"{u['status'] or '–'} | {u['bytes_counted'] if u['bytes_counted'] is not None else '–'} | "
                         f"{'yes' if u['ok'] else '**no**'} |")
    return lines


def replicas_md(f: dict) -> list[str]:
    lines = ["", "## 50 replicas on one host", "",
             f"examples/hello with {f['replicas']} replicas (memory limit {f['memory_limit']} each), image baked ahead. "
             f"First deploy (50 instances from nothing): {f.get('first_deploy_seconds')} s, peak "
             f"{(f.get('first_deploy') or {}).get('peak_containers')} containers; host memory used "
             f"{f.get('host_memory_used_before_mib')} MiB before, {f.get('host_memory_used_serving_mib')} MiB serving 50 "
             "(the machine is shared: other jobs' memory moves this too). `kiln status` with 50 instances: "
             + ", ".join(f"{t:.2f} s" for t in f.get("kiln_status_seconds", [])) + ".", "",
             "| max_surge | load | `kiln deploy` | failed | requests | rollout | peak containers | host memory used before → peak "
             "| load average (1 min) before → after |", "|---|---|---|---|---|---|---|---|---|"]
    for d in f.get("deploys", []):
        lines.append(f"| {d['max_surge']}{' (**not counted**: ' + d['disturbed'] + ')' if d.get('disturbed') else ''} | "
                     f"{d['load']} | {d['deploy_seconds']:.2f} s | {d['failed']} | {_requests(d)} | "
                     f"{d['rollout_state']} | {d['peak_containers']} | {d['host_memory_used_before_mib']} → "
                     f"{d['peak_host_memory_used_mib']} MiB | {' → '.join(x[0] for x in (d.get('loadavg_before'), d.get('loadavg_after')) if x)} |")
    stale = f.get("stale_keepalive")
    if stale:
        lines += ["", f"A keep-alive connection through the router, idle {stale['idle_s']:g} s after one GET (the router's "
                  f"`timeout http-keep-alive` is 10 s), then a second GET on it: first `{stale['first']}`, second "
                  f"`{stale['second']}`. "
                  + ("bench/openloop.py reuses its idle connections last-in first-out without checking them first, so a "
                     "burst that reaches connections idle for over 10 s meets closed ones (a likely source of `closed` failures)."
                     if not stale["second"].startswith("HTTP/") else
                     "The router kept it open: stale keep-alive connections do not explain `closed` failures.")]
    lines += ["", "Step timings (`kiln rollout show --json`): per kind of step, count, median / slowest duration, and "
              "when the last one was done (s from the rollout's start).", "",
              "| deploy | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    rows = [("first deploy", f.get("first_deploy_steps", {}))] + \
        [(f"{d['max_surge']}, {d['load']}", d["steps"]) for d in f.get("deploys", [])]
    for label, steps in rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{steps[k]['count']} × {steps[k]['median_s']:.2f}/{steps[k]['max_s']:.2f}, last {steps[k]['last_done_at_s']}"
            if k in steps else "–" for k in KINDS) + " |")
    lines.append("")
    for d in f.get("deploys", []):
        lf = d["load_figures"]
        if d["load"] == "wrk":
            lines.append(f"- {d['max_surge']} under wrk: {lf['requests']:,} requests, non-2xx {lf['non_2xx']}, socket errors "
                         f"{lf['socket_errors']}, longest gap without a 2xx {lf['max_gap_ms']} ms, p99 {lf['p99_ms']:.1f} ms.")
        else:
            c = lf["change"]
            lines.append(f"- {d['max_surge']} under open loop ({lf['rate']:.0f} req/s, {lf['timeout_s']:g} s timeout): "
                         f"{c['sent']:,} requests due during the change, {c['failed']} failed {c['failures'] or ''}, p99 "
                         f"{c['p99_ms']} ms, max {c['max_ms']} ms (steady state before: p99 {lf['steady']['p99_ms']} ms).")
            if lf.get("timeline"):
                lines.append("  Failed requests by second of the rollout (by due time), with the steps done in that second: "
                             + "; ".join(f"{t['second']} s: {_kinds(t['failures'])}" + (f" [{_kinds(t['steps_done'])}]" if t["steps_done"] else "")
                                         for t in lf["timeline"]) + ".")
    return lines


def _kinds(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


KINDS = ["Start", "AwaitHealthy", "Route", "Unroute", "Remove"]


def write(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "longlived.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    lines = ["# Long-lived connections across a deploy; 50 replicas on one host", "",
             f"Run {r['started']} – {r.get('finished', '(unfinished)')} with `{r['command']}`. Every figure was measured "
             "in this run.", "", _provenance(r), "", "Machine: " + "; ".join(f"{k} {v}" for k, v in r.get("facts", {}).items()), ""]
    lines += [f"- {n}" for n in r.get("notes", [])]
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |" for t in targets(r)]
    lines += ["", "## Headline", "", *[f"- {h}" for h in headline(r)]]
    if r.get("streams", {}).get("runs"):
        lines += streams_md(r["streams"])
    if r.get("replicas50"):
        lines += replicas_md(r["replicas50"])
    for group, msg in r.get("errors", {}).items():
        lines += ["", f"**{group} did not complete:**", "", "```", msg, "```"]
    (out / "longlived.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.longlived", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one streams run, two 50-replica deploys")
    ap.add_argument("--only", default="", help="comma-separated: streams,replicas50")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--note", action="append", default=[], help="a sentence for the report (repeatable)")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    out = Path(args.out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from bench.facts import machine, provenance
    r: dict = {"command": "python -m bench.longlived " + " ".join(argv if argv is not None else sys.argv[1:]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "provenance": provenance(), "facts": machine(),
               "notes": list(args.note), "errors": {}}
    root = Path(tempfile.mkdtemp(prefix="klong-"))
    groups = {"streams": lambda: streams_group(root, 1 if args.quick else 3, args.quick, r),
              "replicas50": lambda: replicas_group(root, args.quick, r)}
    for name, fn in groups.items():
        if only and name not in only:
            continue
        guarded(r["errors"], name, fn)
        write(r, out)
    r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write(r, out)
    log(f"report: {out / 'longlived.md'}")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
