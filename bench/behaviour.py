"""`python -m bench.behaviour [--quick] [--only post,sigstop,router]`: three behaviours a skeptic
asks about, measured on a private copy of examples/hello through the real kiln CLI.

- post: POST requests during deploys and kills run exactly once. A bench variant of the app
  answers POST /order by writing `EXEC <id> <instance>` to stdout; the logs of every instance
  container are followed from its start; open-loop POSTs each carry a unique id. Per scenario
  (rolling, blue-green, canary, `docker kill` of an instance with `kiln agent` running): sent,
  answered 2xx, failed, executed 0 / 1 / more times, and answered 2xx but never executed (lost).
- sigstop: `docker kill -s STOP` of one of 2 serving instances under open-loop GETs; the router's
  `show stat` polled every ~20 ms for when the frozen server stops being UP; failures and latency.
- router: `docker kill` of the router with `kiln agent` running; time until requests succeed
  again and until the router has every server back; failures.

Writes bench/results/behaviour.{md,json}."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import docker

from bench.facts import machine, provenance
from bench.harness import LABEL_ARG, RESULTS, BenchApp, engine, guarded, heavy, log, remove_images
from bench.openloop import OpenLoop, window
from kiln.router.haproxy_api import RuntimeClient, ServerStat, add_server

PREFIX = "kbeh"
POST_RATE = 200  # requests a second
GET_RATE = 300
CLIENT_TIMEOUT = 2.0  # seconds
POLL_EVERY = 0.02  # the router's state, in the sigstop and router groups
ROUTER_BACK_S = 5.0  # a killed router's target: a new HAProxy answers and has its servers within this

# The bench variant: POST /order records its execution on stdout (one write, flushed, under a lock
# so two threads' lines never interleave), then does the order's work (ORDER_WORK_S: a database
# write, say; ~10 requests are in flight at 200/s, so a kill catches some mid-request), and answers
# 200 with the request's id.
ORDER_WORK_S = 0.05
ORDER = ("    def _send(self, status, text, ctype=\"text/plain\"):\n",
         "    def do_POST(self):  # bench variant: each execution of POST /order is one stdout line\n"
         "        self.rfile.read(int(self.headers.get(\"Content-Length\") or 0))\n"
         "        rid = self.headers.get(\"X-Request-Id\", \"-\")\n"
         "        with EXEC_LOCK:\n"
         "            sys.stdout.write(f\"EXEC {rid} {INSTANCE}\\n\")\n"
         "            sys.stdout.flush()\n"
         f"        time.sleep({ORDER_WORK_S})\n"
         "        self._send(200, rid + \"\\n\")\n\n"
         "    def _send(self, status, text, ctype=\"text/plain\"):\n")
LOCK_LINE = ("GREETING = os.environ.get(\"GREETING\", \"hello\")\n",
             "GREETING = os.environ.get(\"GREETING\", \"hello\")\nEXEC_LOCK = threading.Lock()\n")
TIME_IMPORT = ("import threading\n", "import threading\nimport time\n")


def order_variant(app: BenchApp) -> None:
    """Make the app's copy the POST /order variant (kept by every later set_message)."""
    path = app.dir / "app.py"
    text = path.read_text()
    for old, new in (ORDER, LOCK_LINE, TIME_IMPORT):
        if old not in text:
            raise ValueError(f"{old!r} not in examples/hello/app.py")
        text = text.replace(old, new, 1)
    path.write_text(text)


# --- following every instance's logs ------------------------------------------------------------


class Executions:
    """Every `EXEC <id> <instance>` line written by any instance container of `app` from the moment
    it starts: engine events announce each start, and a thread per container follows its logs
    (from the container's start, so none is missed however late the thread attaches)."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.lines: list[tuple[str, str]] = []  # (id, instance)
        self.followed: set[str] = set()
        self.lock = threading.Lock()
        self.client = docker.from_env(timeout=None)
        self.since = time.time()
        threading.Thread(target=self._watch, daemon=True).start()
        for c in self.client.containers.list(filters={"label": [f"kiln.app={app}", "kiln.role=instance"]}):
            self._follow(c.id)

    def _watch(self) -> None:
        filters = {"type": "container", "event": "start", "label": [f"kiln.app={self.app}", "kiln.role=instance"]}
        for ev in self.client.api.events(since=int(self.since) - 1, filters=filters, decode=True):
            self._follow(ev["id"])

    def _follow(self, cid: str) -> None:
        with self.lock:
            if cid in self.followed:
                return
            self.followed.add(cid)
        threading.Thread(target=self._read, args=(cid,), daemon=True).start()

    def _read(self, cid: str) -> None:
        try:
            buf = b""
            for chunk in self.client.api.logs(cid, stream=True, follow=True, stdout=True, stderr=False):
                buf += chunk
                *done, buf = buf.split(b"\n")
                for line in done:
                    parts = line.decode(errors="replace").split()
                    if len(parts) == 3 and parts[0] == "EXEC":
                        with self.lock:
                            self.lines.append((parts[1], parts[2]))
        except docker.errors.NotFound:
            log(f"container {cid[:12]} was gone before its logs were read")

    def counts(self, prefix: str) -> Counter:
        with self.lock:
            return Counter(rid for rid, _ in self.lines if rid.startswith(prefix + "-"))


# --- kiln agent, the router's state ---------------------------------------------------------------


def router_client(app: BenchApp) -> RuntimeClient:
    return RuntimeClient(app.home / "routers" / f"{app.name}-production" / "admin.sock", timeout=1.0)


def public_servers(client: RuntimeClient) -> list[ServerStat] | None:
    """The public backend's servers, or None when the admin socket does not answer."""
    try:
        return [s for s in client.stats() if not s.backend.endswith("-preview")]
    except Exception:  # noqa: BLE001 — a router down or restarting: no answer is a reading too
        return None


def wait_serving(app: BenchApp, replicas: int = 2, timeout: float = 60, without: str = "") -> float:
    """Seconds until the router has exactly `replicas` servers, all UP with weight (none at address `without`)."""
    began = time.monotonic()
    client = router_client(app)
    while time.monotonic() - began < timeout:
        servers = public_servers(client) or []
        up = [s for s in servers if s.status == "UP" and s.weight > 0 and not (without and s.address.startswith(without + ":"))]
        if len(up) == replicas == len(servers):
            return time.monotonic() - began
        time.sleep(0.2)
    raise RuntimeError(f"{app.name}: not {replicas} UP servers in the router after {timeout:.0f}s: {public_servers(client)}")


def instance_ip(container) -> str:  # type: ignore[no-untyped-def]
    container.reload()
    nets = container.attrs["NetworkSettings"]["Networks"]
    return next(n["IPAddress"] for n in nets.values() if n.get("IPAddress"))


def _ms(start: float, t: float) -> float:
    """An instant as ms from the load's start (the samples' clock)."""
    return (t - start) * 1000


# --- 1. POST exactly once -----------------------------------------------------------------------


POST_SCENARIOS = [
    ("rolling deploy", {"strategy": "rolling", "max_surge": "100%", "max_unavailable": 0}),
    ("blue-green deploy", {"strategy": "blue-green", "smoke": [{"path": "/health", "status": 200, "body": "ok"}]}),
    ("canary deploy", {"strategy": "canary", "steps": [{"weight": 20, "pause": "2s"}, {"weight": 50, "pause": "2s"}]}),
    ("docker kill of one instance", None),
]


def post_counts(samples: list[list], executed: Counter) -> dict:
    """Client outcome against executions, per request id."""
    ok = [s for s in samples if isinstance(s[2], int) and 200 <= s[2] < 300]
    failed = [s for s in samples if not (isinstance(s[2], int) and 200 <= s[2] < 300)]
    times = [executed.get(s[3], 0) for s in samples]
    kinds = Counter(s[2] if isinstance(s[2], str) else "non_2xx" for s in failed)
    ids = {s[3] for s in samples}
    return {"sent": len(samples), "ok": len(ok), "failed": len(failed), "failures": dict(kinds),
            "executed_0": times.count(0), "executed_1": times.count(1), "duplicates": sum(1 for t in times if t > 1),
            "lost": sum(1 for s in ok if executed.get(s[3], 0) == 0),
            "failed_but_executed": sum(1 for s in failed if executed.get(s[3], 0) > 0),
            "unknown_ids_executed": sum(1 for rid in executed if rid not in ids)}


def post_scenario(app: BenchApp, execs: Executions, name: str, run_no: int, action: Callable[[], object]) -> dict:
    prefix = f"{re.sub(r'[^a-z]+', '', name)[:10]}{run_no}x{int(time.time())}"
    load = OpenLoop(app.url + "order", POST_RATE, CLIENT_TIMEOUT, post=prefix)
    time.sleep(2)
    began = time.monotonic()
    try:
        action()
    finally:
        took = time.monotonic() - began
        time.sleep(1)
        data = load.stop()
    time.sleep(2)  # the last lines reach the log streams
    row = {"scenario": name, "run": run_no, "change_seconds": round(took, 2), **post_counts(data["samples"], execs.counts(prefix))}
    log(f"POST {name}: {json.dumps(row)}")
    return row


def kill_instance(app: BenchApp) -> None:
    victim = next(c for c in app.containers() if c.labels.get("kiln.role") == "instance" and c.status == "running")
    address = instance_ip(victim)
    victim.kill()
    wait_serving(app, without=address)  # the agent's replacement is UP in the router, the dead one gone


def post_group(app: BenchApp, runs: int) -> list[dict]:
    execs = Executions(app.name)
    rows = []
    for run_no in range(1, runs + 1):
        for name, policy in POST_SCENARIOS:
            if policy is None:
                with heavy(f"POST under {name}, run {run_no}"), app.agent():
                    wait_serving(app)
                    rows.append(post_scenario(app, execs, name, run_no, lambda: kill_instance(app)))
                continue
            app.set_rollout(**policy)
            app.set_message(f"post {name} {run_no}")
            app.image_tag()  # baked before the load: the scenario measures the rollout
            with heavy(f"POST under {name}, run {run_no}"):
                rows.append(post_scenario(app, execs, name, run_no, lambda: app.kiln("deploy")))
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    return rows


# --- 2. a frozen instance ------------------------------------------------------------------------


class Poller:
    """The router's public servers every POLL_EVERY seconds, kept as transitions (time, {server: status})."""

    def __init__(self, app: BenchApp) -> None:
        self.client = router_client(app)
        self.states: list[tuple[float, dict[str, list] | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last: object = ()
        while not self.stop.is_set():
            servers = public_servers(self.client)
            now = {s.name: [s.status, s.weight, s.address] for s in servers} if servers is not None else None
            if now != last:
                self.states.append((time.time(), now))
                last = now
            time.sleep(POLL_EVERY)

    def end(self) -> list[tuple[float, dict[str, list] | None]]:
        self.stop.set()
        self.thread.join(timeout=5)
        return self.states

    def first(self, after: float, test: Callable[[dict[str, list] | None], bool]) -> float | None:
        return next((t for t, s in list(self.states) if t >= after and test(s)), None)


def status_at(state: dict[str, list] | None, address: str) -> str | None:
    """The status of the server at `address` ("UP", "UP 1/2", "DOWN", "MAINT"…), None if it is not there."""
    return next((v[0] for v in (state or {}).values() if v[2].startswith(address + ":")), None)


def serving(state: dict[str, list] | None, replicas: int) -> bool:
    return state is not None and len(state) == replicas and all(v[0] == "UP" and v[1] > 0 for v in state.values())


def container_pids(container) -> list[int]:  # type: ignore[no-untyped-def]
    """Host pids of every process in the container (docker-init as PID 1, the app under it)."""
    top = container.top()
    col = top["Titles"].index("PID")
    return [int(p[col]) for p in top["Processes"]]


def process_states(pids: list[int]) -> list[str]:
    """`pid:state command` from /proc (T = stopped), the evidence of what a signal froze."""
    out = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            out.append(f"{pid}:{stat.rsplit(')', 1)[1].split()[0]} {stat[stat.index('(') + 1:stat.rindex(')')]}")
        except OSError:
            out.append(f"{pid}:gone")
    return out


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # the agent replaced the instance meanwhile


def sigstop_once(app: BenchApp, run_no: int, mode: str, watch: float = 20) -> dict:
    """mode "pid1": `docker kill -s STOP` (signals the container's PID 1 only); "all": SIGSTOP to every
    process of the container from the host (the app itself frozen, as a stuck VM or a GC pause)."""
    wait_serving(app)
    victim = next(c for c in app.containers() if c.labels.get("kiln.role") == "instance" and c.status == "running")
    address, pids = instance_ip(victim), container_pids(victim)
    load = OpenLoop(app.url, GET_RATE, CLIENT_TIMEOUT)
    poller = Poller(app)
    time.sleep(3)
    stopped = time.time()
    if mode == "pid1":
        victim.kill(signal="SIGSTOP")
    else:
        signal_all(pids, signal.SIGSTOP)
    time.sleep(0.1)
    frozen_states = process_states(pids)

    def out(s: dict[str, list] | None) -> bool:
        return s is not None and not (status_at(s, address) or "").startswith("UP")  # DOWN, MAINT, DRAIN or gone
    deadline = stopped + watch
    while time.time() < deadline and not out(poller.states[-1][1]):
        time.sleep(0.05)
    out_at = poller.first(stopped, out)
    first_fail = poller.first(stopped, lambda s: out(s) or (status_at(s, address) or "").startswith("UP "))  # UP 1/2
    time.sleep(2)
    resumed = time.time()
    if mode == "pid1":
        try:
            victim.kill(signal="SIGCONT")
        except docker.errors.APIError as exc:  # the agent already removed it
            log(f"SIGCONT: {exc}")
    else:
        signal_all(pids, signal.SIGCONT)
    back = wait_serving(app)
    time.sleep(1)
    data = load.stop()
    states = poller.end()
    start = data["start"]
    t_out = out_at or resumed
    left_as = next((status_at(st, address) or "removed" for t, st in states if t == out_at), None)
    row = {"run": run_no, "mode": mode, "server_address": address, "process_states_after_stop": frozen_states,
           "out_of_rotation_s": round(out_at - stopped, 3) if out_at else None, "left_as": left_as,
           "first_failed_check_s": round(first_fail - stopped, 3) if first_fail else None, "watched_s": watch,
           "sigcont_after_s": round(resumed - stopped, 2), "serving_again_after_sigcont_s": round(back, 2),
           "steady": window(data["samples"], 0, _ms(start, stopped)),
           "frozen": window(data["samples"], _ms(start, stopped), _ms(start, t_out)),
           "after": window(data["samples"], _ms(start, t_out), float("inf")),
           "all_from_stop": window(data["samples"], _ms(start, stopped), float("inf")),
           "router_states": [[round(t - stopped, 3), st] for t, st in states],
           "victim": victim.name}
    log(f"SIGSTOP ({mode}) run {run_no}: {frozen_states}; out of rotation {row['out_of_rotation_s']} s as {left_as}, "
        f"first failed check {row['first_failed_check_s']} s, failed {row['all_from_stop']['failed']} {row['all_from_stop']['failures']}")
    return row


def sigstop_group(app: BenchApp, runs: int) -> list[dict]:
    rows = []
    with app.agent():
        with heavy("docker kill -s STOP of one instance (PID 1 only)"):
            rows.append(sigstop_once(app, 0, "pid1", watch=8))
        for i in range(1, runs + 1):
            with heavy(f"SIGSTOP of every process of one instance, run {i}"):
                rows.append(sigstop_once(app, i, "all"))
    return rows


# --- 3. a killed router ------------------------------------------------------------------------------


class RouterEvents:
    """The router container's engine events from now on (a live stream: what happened to it, and who made the new one)."""

    ACTIONS = ("kill", "die", "stop", "start", "create", "destroy", "restart")

    def __init__(self, app: BenchApp) -> None:
        self.since = time.time()
        self.seen: list[list] = []
        filters = {"type": "container", "label": [f"kiln.app={app.name}", "kiln.role=router"]}
        self.stream = docker.from_env(timeout=None).api.events(since=int(self.since), filters=filters, decode=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for e in self.stream:
            if e.get("Action") in self.ACTIONS:
                self.seen.append([e.get("timeNano", 0) / 1e9, e["Action"], e.get("id", "")[:12]])

    def since_kill(self, killed: float) -> list[list]:
        return [[round(t - killed, 3), action, cid] for t, action, cid in list(self.seen) if t >= killed - 0.5]


def port_evidence(port: int) -> dict:
    """Why a bind to the router's port may fail while nothing listens on it: sockets on it by TCP state
    (/proc/net/tcp: 06 TIME_WAIT, 0A LISTEN), and a bind to 127.0.0.1 without and with SO_REUSEADDR."""
    states: Counter = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[{"06": "TIME_WAIT", "0A": "LISTEN", "01": "ESTABLISHED"}.get(fields[3], fields[3])] += 1
    out = {"sockets_by_state": dict(states)}
    for reuse in (False, True):
        with socket.socket() as sock:
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                out["bind_with_reuseaddr" if reuse else "bind_plain"] = "ok"
            except OSError as exc:
                out["bind_with_reuseaddr" if reuse else "bind_plain"] = errno.errorcode.get(exc.errno or 0, str(exc))
    return out


def agent_port_complaints(app: BenchApp) -> int:
    return (app.home / "agent.log").read_text().count("is already in use")


def router_kill_once(app: BenchApp, run_no: int) -> dict:
    wait_serving(app)
    router = next(c for c in app.containers() if c.labels.get("kiln.role") == "router")
    load = OpenLoop(app.url, GET_RATE, CLIENT_TIMEOUT)
    poller, events = Poller(app), RouterEvents(app)
    time.sleep(2)
    complaints = agent_port_complaints(app)
    killed = time.time()
    router.kill()
    time.sleep(1)
    evidence = port_evidence(app.port)  # while the router is down
    try:
        wait_serving(app, timeout=90)
    except RuntimeError as exc:
        log(f"router kill run {run_no}: {exc}")
    time.sleep(2)
    data = load.stop()
    poller.end()
    start = data["start"]
    after = [s for s in data["samples"] if s[0] >= _ms(start, killed)]
    bad = [s for s in after if not (isinstance(s[2], int) and 200 <= s[2] < 300)]
    ok = [s for s in after if isinstance(s[2], int) and 200 <= s[2] < 300 and bad and s[0] > bad[0][0]]
    socket_back = poller.first(killed + 0.5, lambda s: s is not None)
    all_back = poller.first(killed + 0.5, lambda s: serving(s, 2))
    now = next((c for c in app.containers() if c.labels.get("kiln.role") == "router"), None)
    row = {"run": run_no,
           "first_failure_after_s": round(bad[0][0] / 1000 - (killed - start), 3) if bad else None,
           "first_2xx_after_failures_s": round(ok[0][0] / 1000 - (killed - start), 3) if ok else None,
           "last_failure_after_s": round(bad[-1][0] / 1000 - (killed - start), 3) if bad else None,
           "admin_socket_back_s": round(socket_back - killed, 3) if socket_back else None,
           "all_servers_back_s": round(all_back - killed, 3) if all_back else None,
           "steady": window(data["samples"], 0, _ms(start, killed)),
           "from_kill": window(data["samples"], _ms(start, killed), float("inf")),
           "port_1s_after_kill": evidence, "agent_port_in_use_messages": agent_port_complaints(app) - complaints,
           "router_before": router.id[:12], "router_after": now.id[:12] if now else None,
           "restart_count_after": (now.attrs.get("RestartCount") if now else None),
           "router_events": events.since_kill(killed),
           "router_states": [[round(t - killed, 3), s] for t, s in poller.states if t >= killed - 0.1]}
    log(f"router kill run {run_no}: port {evidence}, agent said port in use {row['agent_port_in_use_messages']}x; "
        f"last failure {row['last_failure_after_s']} s, all servers back {row['all_servers_back_s']} s, "
        f"failed {row['from_kill']['failed']} {row['from_kill']['failures']}; events {row['router_events']}")
    return row


def router_group(app: BenchApp, runs: int) -> list[dict]:
    rows = []
    with app.agent():
        for i in range(1, runs + 1):
            with heavy(f"docker kill of the router, run {i}"):
                rows.append(router_kill_once(app, i))
    return rows


# --- targets, headline, report ---------------------------------------------------------------------


def _agg(rows: list[dict], key: str) -> int:
    return sum(r[key] for r in rows)


def targets(result: dict) -> list[dict]:
    out = []
    post = result.get("post") or []
    for name in dict.fromkeys(r["scenario"] for r in post):
        rows = [r for r in post if r["scenario"] == name]
        sent, dup, lost, failed = (_agg(rows, k) for k in ("sent", "duplicates", "lost", "failed"))
        out.append({"target": f"POST during {name}: executed at most once, none answered 2xx without running (0 duplicates, 0 lost)",
                    "measured": f"{sent:,} POSTs: {dup} duplicates, {lost} lost", "met": dup == 0 and lost == 0})
        out.append({"target": f"POST during {name}: 0 failed", "measured": f"{failed} failed of {sent:,}"
                    + (f" ({_agg(rows, 'failed_but_executed')} of them executed)" if failed else ""), "met": failed == 0})
    stops = [r for r in result.get("sigstop") or [] if r.get("mode") == "all"]
    if stops:
        interval = result.get("health", {}).get("interval_s", 0.5)
        times = [r["out_of_rotation_s"] for r in stops]
        met = all(t is not None and t <= interval for t in times)
        out.append({"target": f"frozen instance (SIGSTOP) out of rotation within the health interval ({interval * 1000:.0f} ms)",
                    "measured": "after " + ", ".join("never (20 s)" if t is None else f"{t:.2f} s" for t in times), "met": met})
        failed = sum(r["all_from_stop"]["failed"] for r in stops)
        sent = sum(r["all_from_stop"]["sent"] for r in stops)
        out.append({"target": "frozen instance: 0 failed requests", "met": failed == 0,
                    "measured": f"{failed} failed of {sent:,} sent from the SIGSTOP on "
                                f"({sum(r['all_from_stop']['timeouts'] for r in stops)} timeouts)"})
    kills = result.get("router") or []
    if kills:
        back = [r["all_servers_back_s"] for r in kills]
        out.append({"target": "killed router: service restored by itself (kiln agent running)",
                    "measured": "every server back after " + ", ".join("never (90 s)" if b is None else f"{b:.1f} s" for b in back)
                                + "; last failed request due " + ", ".join(f"{r['last_failure_after_s']} s" for r in kills)
                                + " after the kill",
                    "met": all(b is not None for b in back)})
        out.append({"target": f"killed router: every server back within {ROUTER_BACK_S:.0f} s (a new router starts and gets its servers "
                              "in about a second)", "measured": ", ".join("never" if b is None else f"{b:.1f} s" for b in back)
                    + (f" ({why})" if (why := router_cause(kills)) else ""),
                    "met": all(b is not None and b <= ROUTER_BACK_S for b in back)})
    return out


def headline(result: dict) -> list[str]:
    out = []
    post = result.get("post") or []
    if post:
        out.append(f"POST during deploys and kills: {_agg(post, 'sent'):,} sent, {_agg(post, 'duplicates')} executed twice, "
                   f"{_agg(post, 'lost')} answered 2xx without running, {_agg(post, 'failed')} failed "
                   f"({_agg(post, 'failed_but_executed')} of those executed)")
    stops = [r for r in result.get("sigstop") or [] if r.get("mode") == "all"]
    if stops:
        times = [r["out_of_rotation_s"] for r in stops]
        out.append("SIGSTOP of an instance's processes: out of the router after " + ", ".join(f"{t} s" for t in times)
                   + f" (health interval {result.get('health', {}).get('interval_s')} s); "
                   f"{sum(r['all_from_stop']['failed'] for r in stops)} failed requests")
    kills = result.get("router") or []
    if kills:
        out.append("router killed: every server back after " + ", ".join(f"{r['all_servers_back_s']} s" for r in kills)
                   + f"; {sum(r['from_kill']['failed'] for r in kills):,} failed of {sum(r['from_kill']['sent'] for r in kills):,} "
                   "requests sent from the kill on (a router kill cannot be 0)")
    return out


def post_notes(rows: list[dict]) -> list[str]:
    """What the failed POSTs were, from their own counts."""
    out = []
    for name in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == name]
        failed, ran, dup = _agg(mine, "failed"), _agg(mine, "failed_but_executed"), _agg(mine, "duplicates")
        if failed:
            out.append(f"{name}: of the {failed} failed POSTs, {ran} ran once and got no answer, {failed - ran} never ran; "
                       f"{dup} ran twice. "
                       + ("A POST in flight on an instance killed with SIGKILL can only fail or run twice: the router did "
                          "not replay these elsewhere." if "kill" in name else ""))
    return out


def router_cause(kills: list[dict]) -> str:
    """What the runs show held a killed router's replacement back, from their own evidence."""
    blocked = [k for k in kills if k["port_1s_after_kill"].get("bind_plain") == "EADDRINUSE"
               and k["port_1s_after_kill"].get("bind_with_reuseaddr") == "ok" and k["agent_port_in_use_messages"]]
    if not blocked:
        return ""
    tw = [k["port_1s_after_kill"]["sockets_by_state"].get("TIME_WAIT", 0) for k in blocked]
    return (f"in {len(blocked)} of {len(kills)} runs the agent's check that the port is free failed "
            f"({', '.join(str(k['agent_port_in_use_messages']) for k in blocked)} times): 1 s after the kill "
            f"{', '.join(map(str, tw))} TIME_WAIT sockets held the port, a plain bind() got EADDRINUSE and one with "
            "SO_REUSEADDR succeeded; TIME_WAIT lasts 60 s on Linux")


def sigstop_cause(result: dict) -> str:
    """The active checks' bound against the measured times."""
    h = result.get("health") or {}
    rows = [r for r in result.get("sigstop") or [] if r.get("mode") == "all" and r["out_of_rotation_s"] is not None]
    if not rows or not h.get("timeout_s"):
        return ""
    one = h["interval_s"] + h["timeout_s"]
    return (f"A frozen server accepts connections (the kernel completes them) but never answers, so each check fails only "
            f"when `timeout check` ({h['timeout_s']} s) expires, and checks follow each other `inter` ({h['interval_s']} s) "
            f"apart: the first failed check comes at most {one:.1f} s after the freeze (measured "
            f"{', '.join(str(r['first_failed_check_s']) for r in rows)} s), and `fall {h['fall']}` puts the server DOWN "
            f"after {h['fall']} of them, at most {h['fall'] * one:.1f} s (measured {', '.join(str(r['out_of_rotation_s']) for r in rows)} s). "
            f"Requests sent to it meanwhile wait for `timeout server` ({h.get('timeout_server')}) before HAProxy could retry "
            "them, far beyond the client's 2 s: every one is a client timeout.")


def _fmt(w: dict) -> str:
    return (f"{w['sent']:,} sent, {w['failed']} failed" + (f" {w['failures']}" if w["failed"] else "")
            + f", p50 {w['p50_ms']} / p99 {w['p99_ms']} / max {w['max_ms']} ms")


def write(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "behaviour.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    p = r["provenance"]
    lines = ["# kiln behaviours: POST exactly once, a frozen instance, a killed router", "",
             f"Run {r['started']} – {r.get('finished', '(unfinished)')} with `{r['command']}`; commit `{p['commit'][:12]}`"
             + (f", **dirty tree** ({', '.join(p['changed'])})" if p["dirty"] else ", clean tree")
             + f". Load average at start: {r.get('loadavg')}. Every figure was measured in this run.", ""]
    lines += [f"- {n}" for n in r.get("notes", [])] + [""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |" for t in targets(r)]
    lines += ["", "## Headline", "", *[f"- {h}" for h in headline(r)]]
    if r.get("post"):
        lines += ["", "## POST requests during deploys and kills", "",
                  f"Open-loop POST /order at {POST_RATE}/s ({CLIENT_TIMEOUT:.0f} s client timeout, nothing retried by the client), "
                  "each with a unique X-Request-Id; the bench variant of examples/hello writes `EXEC <id> <instance>` per "
                  f"execution, then works {ORDER_WORK_S * 1000:.0f} ms before it answers (about {POST_RATE * ORDER_WORK_S:.0f} "
                  "requests in flight at any time, so a kill catches some mid-request), and the logs of every instance container of the app were followed from its start. 2 s of load "
                  "before the change, 1 s after. The kill scenario: `docker kill` of one of 2 serving instances with "
                  "`kiln agent` running, until its replacement is UP in the router.", "",
                  "| scenario | run | change | sent | 2xx | failed | executed 0× | 1× | >1× (duplicates) | 2xx but 0× (lost) | failed but executed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["post"]:
            lines.append(f"| {x['scenario']} | {x['run']} | {x['change_seconds']} s | {x['sent']:,} | {x['ok']:,} | {x['failed']}"
                         + (f" {x['failures']}" if x["failed"] else "") + f" | {x['executed_0']} | {x['executed_1']:,} | "
                         f"{x['duplicates']} | {x['lost']} | {x['failed_but_executed']} |")
        lines += ["", *post_notes(r["post"])]
    if r.get("sigstop"):
        h = r.get("health", {})
        lines += ["", "## A frozen instance (SIGSTOP)", "",
                  f"2 replicas; the router checks each server every {h.get('interval_s')} s (`inter`), a check may take "
                  f"{h.get('timeout_s')} s (`timeout check`), and a server is DOWN after `fall` {h.get('fall')} failed checks. "
                  f"Open-loop GETs at {GET_RATE}/s with a {CLIENT_TIMEOUT:.0f} s client timeout; `kiln agent` running; "
                  "`show stat` polled every ~20 ms. Time from the SIGSTOP to the frozen server's first failed check "
                  "(`UP 1/2`) and to it leaving UP; then SIGCONT 2 s later. Run 0 is `docker kill -s STOP`, which signals "
                  "the container's PID 1 only: kiln runs instances with `init: true`, so that is docker-init, and the app "
                  "under it keeps running (the process states below); runs 1+ send SIGSTOP to every process of the "
                  "container from the host.", "", *([sigstop_cause(r), ""] if sigstop_cause(r) else []),
                  "| run | stopped | processes after the signal (pid:state) | first failed check | out of rotation (as) | steady (before) "
                  "| SIGSTOP → out of rotation | after | all from the SIGSTOP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in r["sigstop"]:
            what = "`docker kill -s STOP` (PID 1)" if x["mode"] == "pid1" else "SIGSTOP to every process"
            gone = f"{x['out_of_rotation_s']} s ({x['left_as']})" if x["out_of_rotation_s"] is not None else f"not within {x['watched_s']} s"
            lines.append(f"| {x['run']} | {what} | {', '.join(x['process_states_after_stop'])} | {x['first_failed_check_s']} s | "
                         f"{gone} | {_fmt(x['steady'])} | {_fmt(x['frozen'])} | {_fmt(x['after'])} | {_fmt(x['all_from_stop'])} |")
    if r.get("router"):
        lines += ["", "## A killed router", "",
                  f"`docker kill` of the router container, `kiln agent` running, open-loop GETs at {GET_RATE}/s "
                  f"({CLIENT_TIMEOUT:.0f} s client timeout). Times from the kill; a failure kind `non_2xx` is HAProxy's 503 "
                  "between a new router's start and the agent adding its servers.", "",
                  *([f"What held the new router back: {router_cause(r['router'])}.", ""] if router_cause(r["router"]) else []),
                  "| run | first failure | last failure | admin socket answers | every server UP | failed from the kill "
                  "| router container | engine events (s, action, id) | port 1 s after the kill | agent: port in use |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["router"]:
            lines.append(f"| {x['run']} | {x['first_failure_after_s']} s | {x['last_failure_after_s']} s | {x['admin_socket_back_s']} s | "
                         f"{x['all_servers_back_s']} s | {_fmt(x['from_kill'])} | {x['router_before']} → {x['router_after']} "
                         f"(restarts {x['restart_count_after']}) | {x['router_events']} | {x['port_1s_after_kill']} | "
                         f"{x['agent_port_in_use_messages']} times |")
    for group, msg in r.get("errors", {}).items():
        lines += ["", f"**{group} did not complete:**", "", "```", msg, "```"]
    (out / "behaviour.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.behaviour", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one run of each")
    ap.add_argument("--only", default="", help="comma-separated: post,sigstop,router")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--note", action="append", default=[], help="a sentence for the report (repeatable)")
    ap.add_argument("--check-timeout", metavar="DURATION", help="the app's healthcheck timeout (e.g. 500ms; default "
                                                                   "examples/hello's): a variant for the sigstop group")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the report's markdown from its JSON")
    args = ap.parse_args(argv)
    if args.render:
        write(json.loads(Path(args.render).read_text()), Path(args.render).parent)
        return 0
    only = set(filter(None, args.only.split(","))) or {"post", "sigstop", "router"}
    runs = {"post": 1, "sigstop": 1, "router": 1} if args.quick else {"post": 2, "sigstop": 3, "router": 3}
    out = Path(args.out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    r: dict = {"command": "python -m bench.behaviour " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "provenance": provenance(), "notes": list(args.note),
               "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]), "errors": {},
               "health": {}}
    app = BenchApp.make(Path(tempfile.mkdtemp(prefix="kiln-behaviour-")), PREFIX)
    order_variant(app)
    if args.check_timeout:
        app.set_healthcheck(timeout=args.check_timeout)
    try:
        with heavy("behaviour: first deploy"):
            app.kiln("deploy")
            r["facts"] = machine()
        r["health"].update(router_health(app))
        for name, fn in (("post", post_group), ("sigstop", sigstop_group), ("router", router_group)):
            if name not in only:
                continue
            r[name] = guarded(r["errors"], name, lambda fn=fn, name=name: fn(app, runs[name]))
            write(r, out)
    finally:
        with heavy("behaviour: cleanup"):
            app.kiln("destroy", "--env", "production", check=False)
            r["left_after_cleanup"] = remove_own(app)
            remove_images([f"kiln/{app.name}"], [])
        r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write(r, out)
    log(f"report: {out / 'behaviour.md'}")
    return 1 if r["errors"] else 0


def router_health(app: BenchApp) -> dict:
    """The health-check settings the router has: `timeout check` from its haproxy.cfg, `inter` from the
    spec (what kiln passes to `add server`), `fall` from the `add server` command kiln sends."""
    from ruamel.yaml import YAML
    cfg = (app.home / "routers" / f"{app.name}-production" / "haproxy.cfg").read_text()
    timeout = re.search(r"timeout check (\d+)ms", cfg)
    interval = str(YAML().load(app.spec)["services"]["web"]["healthcheck"]["interval"])
    fall = re.search(r" fall (\d+)", add_server("b", "s", "127.0.0.1", 1, 500)[0])
    return {"interval_s": int(interval.removesuffix("ms")) / 1000 if interval.endswith("ms") else float(interval.rstrip("s")),
            "timeout_s": int(timeout.group(1)) / 1000 if timeout else None, "fall": int(fall.group(1)) if fall else None,
            "timeout_server": (re.search(r"timeout server (\S+)", cfg) or [None, None])[1]}


def remove_own(app: BenchApp) -> list[str]:
    """Remove what `kiln destroy` left of this app (only this app's: other work shares the engine); what was left."""
    client = engine()
    left = []
    for c in client.containers.list(all=True, filters={"label": [LABEL_ARG, f"kiln.app={app.name}"]}):
        left.append(c.name)
        c.remove(force=True, v=True)
    for n in client.networks.list(filters={"label": [LABEL_ARG]}):
        if app.name in n.name:
            left.append(n.name)
            n.remove()
    return left


if __name__ == "__main__":
    sys.exit(main())
