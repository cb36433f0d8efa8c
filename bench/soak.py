"""`python -m bench.soak [--quick]`: two long measurements, run side by side; writes
bench/results/soak.{md,json}.

1. Memory soak: a private copy of examples/hello (2 replicas) with `kiln agent` and `kiln serve`
   running in the background, `kiln deploy` of a new release (a new message, so a new image) every
   20 s, open-loop load through the router (bench.openloop, 50 requests a second, 2 s client
   timeout), serve's API polled every 3 s (status, releases, events) and one Server-Sent Events
   client following the app's events. Every 10 s: RSS, PSS and USS (/proc/PID/smaps_rollup) of
   the agent's and serve's process trees, their threads and open files.
2. Ledger growth: a second copy (1 replica, its own KILN_HOME, so its own sqlite ledger) deployed
   back to back, each deploy a new release (an environment value changes; the image stays cached),
   up to 1,000 deploys or a wall-clock deadline; every 100 deploys the ledger's size on disk and the
   time of `kiln releases` (default 20, --json, all with -n), `kiln status`.

Neither holds /tmp/kiln-heavy.lock: both run for half an hour or more, and what they report is
counts and sizes (times are indicative). Everything they create is removed at the end (kiln
destroy, the images kiln baked for the two apps)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.harness import (
    RESULTS,
    BenchApp,
    engine,
    free_port,
    log,
    remove_images,
    start_background,
    stop_background,
)
from bench.openloop import MAX_IDLE, OpenLoop, window

MIB = 1024 * 1024
# Not harness.LABEL: other benchmark runs on this machine remove every container labelled
# kiln.test=bench when they clean up (harness.remove_labelled), and this run lasts half an hour.
SOAK_LABEL = "kiln.test=bench-soak"


class SoakApp(BenchApp):
    """A BenchApp whose containers carry SOAK_LABEL instead of the shared bench label."""

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return super().env({"KILN_EXTRA_LABELS": SOAK_LABEL, **(extra or {})})

    def containers(self) -> list:
        return engine().containers.list(all=True, filters={"label": [SOAK_LABEL, f"kiln.app={self.name}"]})

SLOPE_LIMIT = 5.0  # MiB/hour: "no growth" allows at most this trend after warm-up
MEDIAN_LIMIT = 0.05  # and the last window's median at most 5 % above the first window's


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- memory of a process tree ----------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it (by scanning /proc: no dependence on CONFIG_PROC_CHILDREN)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree += kids
        todo += kids
    return tree


def memory(pid: int) -> dict:
    """RSS, PSS and USS (private clean + dirty) in KiB, threads and open fds, summed over pid's tree."""
    out = {"rss_kb": 0, "pss_kb": 0, "uss_kb": 0, "threads": 0, "fds": 0, "processes": 0}
    for p in descendants(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            status = Path(f"/proc/{p}/status").read_text()
            fds = len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.endswith("kB")}
        out["rss_kb"] += fields.get("Rss", 0)
        out["pss_kb"] += fields.get("Pss", 0)
        out["uss_kb"] += fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        out["threads"] += int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        out["fds"] += fds
        out["processes"] += 1
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB/hour."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600 if den else None


def growth(samples: list[dict], who: str, warmup: float, win: float) -> dict:
    """For `who` ("agent" or "serve"): each memory figure at the end of warm-up, at the end, its
    max, its slope after warm-up, and the medians of the first and last `win` seconds after warm-up."""
    after = [s for s in samples if s["t"] >= warmup and s[who]["processes"]]
    if not after:
        return {}
    end = after[-1]["t"]
    out: dict = {"samples_after_warmup": len(after)}
    for key in ("rss_kb", "pss_kb", "uss_kb"):
        mib = [(s["t"], s[who][key] / 1024) for s in after]
        first = [v for t, v in mib if t < warmup + win]
        last = [v for t, v in mib if t >= end - win]
        out[key.removesuffix("_kb")] = {
            "start_mib": round(mib[0][1], 1), "end_mib": round(mib[-1][1], 1),
            "max_mib": round(max(v for _, v in mib), 1), "slope_mib_per_h": _round(slope_per_hour(mib), 2),
            "first_window_median_mib": round(statistics.median(first), 1),
            "last_window_median_mib": round(statistics.median(last), 1)}
    out["threads"] = [after[0][who]["threads"], max(s[who]["threads"] for s in after), after[-1][who]["threads"]]
    out["fds"] = [after[0][who]["fds"], max(s[who]["fds"] for s in after), after[-1][who]["fds"]]
    out["processes"] = sorted({s[who]["processes"] for s in after})
    return out


def _round(v: float | None, n: int) -> float | None:
    return None if v is None else round(v, n)


def no_growth(g: dict) -> tuple[bool, str]:
    """The definition the targets use: RSS's last-window median within 5 % of its first-window
    median after warm-up, and its slope after warm-up under SLOPE_LIMIT MiB/hour."""
    if not g:
        return False, "no samples"
    r = g["rss"]
    ratio = r["last_window_median_mib"] / r["first_window_median_mib"] - 1
    ok = ratio <= MEDIAN_LIMIT and (r["slope_mib_per_h"] or 0) < SLOPE_LIMIT
    return ok, (f"RSS {r['start_mib']} → {r['end_mib']} MiB (max {r['max_mib']}), medians first/last window "
                f"{r['first_window_median_mib']}/{r['last_window_median_mib']} MiB ({ratio * 100:+.1f} %), "
                f"slope {r['slope_mib_per_h']} MiB/h")


# --- the soak's background workers ---------------------------------------------------------------


@dataclass
class Poller:
    """serve's API polled every `every` seconds, and one SSE client following the app's events."""

    url: str
    token: str
    app: str
    every: float = 3.0
    stop: threading.Event = field(default_factory=threading.Event)
    api: dict = field(default_factory=lambda: {"requests": 0, "failed": 0, "latencies": [], "errors": []})
    sse: dict = field(default_factory=lambda: {"events": {}, "connects": 0, "errors": []})

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._poll, daemon=True), threading.Thread(target=self._follow, daemon=True)]
        for t in self.threads:
            t.start()

    def _poll(self) -> None:
        base = f"/api/v1/apps/{self.app}"
        paths = [f"{base}/envs/production/status", f"{base}/envs/production/releases", f"{base}/events?limit=50"]
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as c:
            while not self.stop.wait(self.every):
                for path in paths:
                    began = time.monotonic()
                    self.api["requests"] += 1
                    try:
                        c.get(path).raise_for_status()
                        self.api["latencies"].append(time.monotonic() - began)
                    except httpx.HTTPError as exc:
                        self.api["failed"] += 1
                        self.api["errors"].append(f"{now()} {path}: {type(exc).__name__}: {exc}"[:300])

    def _follow(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.stop.is_set():
            try:
                with httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(10, read=60)) as c, \
                        c.stream("GET", f"/api/v1/apps/{self.app}/events/stream", params={"env": "production", "limit": 0}) as r:
                    r.raise_for_status()
                    self.sse["connects"] += 1
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                            self.sse["events"][kind] = self.sse["events"].get(kind, 0) + 1
                        if self.stop.is_set():
                            return
            except httpx.HTTPError as exc:
                self.sse["errors"].append(f"{now()}: {type(exc).__name__}: {exc}"[:300])
                self.stop.wait(1)

    def finish(self) -> dict:
        self.stop.set()
        for t in self.threads:
            t.join(20)
        lat = sorted(self.api.pop("latencies"))
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)) if lat else (lambda q: None)
        self.api.update(p50_ms=pct(0.5), p99_ms=pct(0.99), max_ms=round(lat[-1] * 1000, 1) if lat else None)
        self.api["errors"] = self.api["errors"][:20]
        self.sse["errors"] = self.sse["errors"][:20]
        return {"api": self.api, "sse": self.sse}


def sampler(pids: dict[str, int], t0: float, every: float, stop: threading.Event, out: list[dict]) -> None:
    while True:
        out.append({"t": round(time.monotonic() - t0, 1), **{who: memory(pid) for who, pid in pids.items()}})
        if stop.wait(every):
            return


def log_summary(path: Path) -> dict:
    """A background process's log: its size, its tracebacks (how many, and the first and last in full), its tail."""
    lines = path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]

    def block(i: int) -> list[str]:
        end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j].startswith((" ", "Traceback",
                    "The above", "During handling"))), len(lines) - 1)
        return lines[i:end + 1][-60:]
    return {"lines": len(lines), "tracebacks": len(starts), "errors": sum(1 for line in lines if line.startswith("ERROR:")), "first_traceback": block(starts[0]) if starts else [],
            "last_traceback": block(starts[-1]) if len(starts) > 1 else [], "tail": lines[-10:]}


def make_token(app: BenchApp) -> str:
    argv = [app.argv()[0], "token", "create", "soak", "--role", "viewer", "--json"]
    proc = subprocess.run(argv, env=app.env(), capture_output=True, text=True, timeout=60, check=True)
    data = json.loads(proc.stdout)
    return data["token"] if isinstance(data, dict) else str(data)


def wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


# --- 1. memory soak --------------------------------------------------------------------------------


def soak(app: BenchApp, seconds: float, every: float, sample_every: float, rate: float, result: dict) -> None:
    """Fills result["soak"] as it goes (so a failure still leaves what was measured)."""
    r = result["soak"] = {"seconds_planned": seconds, "deploy_every_s": every, "sample_every_s": sample_every,
                          "rate": rate, "replicas": 2, "client_max_idle_s": MAX_IDLE, "deploys": []}
    app.kiln("deploy", timeout=300)
    token = make_token(app)
    port = free_port()
    agent = start_background(app, app.argv("agent", "-e", "production"), app.home / "agent.log")
    serve = start_background(app, app.argv("serve", "--port", str(port)), app.home / "serve.log")
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    samples: list[dict] = []
    r["samples"] = samples
    poller = load = None
    try:
        wait_http(url + "/health")
        poller = Poller(url, token, app.name)
        poller.start()
        # A pooled connection idle for 10 s is closed by kiln's router (`timeout http-keep-alive 10s`), and
        # reusing it fails ("closed"); the client drops those after 5 s, as one that knows the timeout does.
        load = OpenLoop(app.url, rate=rate, timeout=2.0, max_idle=MAX_IDLE)
        t0 = time.monotonic()
        r["started"], r["t0_epoch"] = now(), time.time()
        threading.Thread(target=sampler, args=({"agent": agent.pid, "serve": serve.pid}, t0, sample_every, stop, samples),
                         daemon=True).start()
        k = 0
        while time.monotonic() - t0 < seconds:
            k += 1
            app.set_message(f"soak {k}")
            began = time.monotonic()
            run = app.kiln("deploy", check=False, timeout=300)
            r["deploys"].append({"n": k, "t": round(began - t0, 1), "seconds": round(run.seconds, 2), "exit": run.returncode,
                                 **({"stderr": run.stderr.strip()[-600:]} if run.returncode else {})})
            if run.returncode:
                log(f"soak deploy {k} exited {run.returncode}: {run.stderr.strip()[-300:]}")
            if k % 10 == 0:
                log(f"soak: {k} deploys, {time.monotonic() - t0:.0f}/{seconds:.0f} s; agent/serve RSS "
                    f"{samples[-1]['agent']['rss_kb'] // 1024}/{samples[-1]['serve']['rss_kb'] // 1024} MiB")
            stop.wait(max(0.0, t0 + k * every - time.monotonic()))
        r["finished"] = now()
        r["alive_at_end"] = {"agent": agent.poll() is None, "serve": serve.poll() is None}
    finally:
        stop.set()
        if load is not None:
            data = load.stop()
            r["load"] = window(data["samples"], 0, float("inf"))
            # Each failure's due time in seconds from the soak's start (deploys' `t` are on the same clock).
            shift = data["start"] - r.get("t0_epoch", data["start"])
            r["load"]["failed_at"] = [[round(s[0] / 1000 + shift, 2), s[2]] for s in data["samples"]
                                      if not (isinstance(s[2], int) and 200 <= s[2] < 300)][:20000]
            r["load"]["seconds"] = round(data["samples"][-1][0] / 1000, 1) if data["samples"] else 0
        if poller is not None:
            r.update(poller.finish())
        r["exit_codes"] = {"agent": stop_background(agent), "serve": stop_background(serve)}
        for name in ("agent", "serve"):
            r[f"{name}_log"] = log_summary(app.home / f"{name}.log")


def summarize_soak(r: dict, quick: bool) -> None:
    samples = r.get("samples", [])
    span = samples[-1]["t"] if samples else 0
    warmup = 120.0 if not quick else min(30.0, span / 4)
    win = 300.0 if not quick else max(10.0, (span - warmup) / 3)
    r["warmup_s"], r["window_s"] = warmup, win
    r["growth"] = {who: growth(samples, who, warmup, win) for who in ("agent", "serve")}
    deploys = r.get("deploys", [])
    secs = [d["seconds"] for d in deploys]
    r["deploy_summary"] = {"done": len(deploys), "failed": sum(1 for d in deploys if d["exit"]),
                           "late": sum(1 for d in deploys if d["t"] > (d["n"] - 1) * r["deploy_every_s"] + 1),
                           "median_s": round(statistics.median(secs), 2) if secs else None,
                           "max_s": max(secs) if secs else None}


# --- 2. ledger growth -------------------------------------------------------------------------------


def ledger_files(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(home.glob("ledger.db*"))}


def timed_cli(app: BenchApp, *args: str, repeat: int = 3) -> dict:
    """The median of `repeat` runs (the machine is shared: one run can be unlucky), each run's time kept."""
    runs = [app.kiln(*args, check=False, timeout=120) for _ in range(repeat)]
    return {"seconds": round(statistics.median(r.seconds for r in runs), 3), "runs": [round(r.seconds, 3) for r in runs],
            "exit": max(r.returncode for r in runs), "bytes": len(runs[-1].stdout)}


def checkpoint(app: BenchApp, n: int, times: list[float]) -> dict:
    files = ledger_files(app.home)
    return {"deploys": n, "files": files, "bytes": sum(files.values()),
            "deploy_median_s": round(statistics.median(times), 2) if times else None,
            "deploy_max_s": round(max(times), 2) if times else None,
            "releases": timed_cli(app, "releases"), "releases_json": timed_cli(app, "releases", "--json"),
            "releases_all_json": timed_cli(app, "releases", "--json", "-n", str(n + 10)),
            "status": timed_cli(app, "status"), "at": now(),
            "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


def ledger(app: BenchApp, target: int, every: int, deadline: float | None, result: dict) -> None:
    r = result["ledger"] = {"target": target, "replicas": 1, "checkpoints": [], "failed": [], "done": 0}

    def set_seq(i: int) -> None:
        def change(data: dict) -> None:
            data["services"]["web"]["environment"]["SOAK_SEQ"] = str(i)
        app.edit_spec(change)

    set_seq(0)
    app.kiln("deploy", timeout=300)
    r["checkpoints"].append(checkpoint(app, 0, []))
    r["started"] = now()
    times: list[float] = []
    for i in range(1, target + 1):
        if deadline and time.time() > deadline:
            r["stopped_by_deadline"] = True
            log(f"ledger: deadline reached after {i - 1} deploys")
            break
        set_seq(i)
        run = app.kiln("deploy", check=False, timeout=300)
        times.append(run.seconds)
        r["done"] = i
        if run.returncode:
            r["failed"].append({"n": i, "exit": run.returncode, "stderr": run.stderr.strip()[-600:]})
            log(f"ledger deploy {i} exited {run.returncode}: {run.stderr.strip()[-300:]}")
        if i % every == 0:
            r["checkpoints"].append(checkpoint(app, i, times))
            times = []
            c = r["checkpoints"][-1]
            log(f"ledger: {i} deploys, {c['bytes']:,} bytes, median deploy {c['deploy_median_s']} s, "
                f"kiln releases {c['releases']['seconds']} s")
    if times:
        r["checkpoints"].append(checkpoint(app, r["done"], times))
    r["finished"] = now()


def summarize_ledger(r: dict) -> None:
    cps = r.get("checkpoints", [])
    if len(cps) >= 2:
        first, last = cps[0], cps[-1]
        r["bytes_per_deploy"] = round((last["bytes"] - first["bytes"]) / max(1, last["deploys"] - first["deploys"]))


# --- report ----------------------------------------------------------------------------------------


def _causes(failed: list[dict]) -> str:
    """The distinct first lines of failed deploys' errors, with counts."""
    out: dict[str, int] = {}
    for f in failed:
        line = next((x for x in f.get("stderr", "").splitlines() if x.startswith("error:")), f"exit {f.get('exit')}")
        out[line[:160]] = out.get(line[:160], 0) + 1
    return "; ".join(f"{n}× `{k}`" for k, n in out.items())


def targets(result: dict) -> list[dict]:
    rows = []
    s = result.get("soak", {})
    minutes = round(s.get("seconds_planned", 0) / 60)
    d = s.get("deploy_summary", {})
    for who in ("agent", "serve"):
        ok, measured = no_growth(s.get("growth", {}).get(who, {}))
        rows.append({"target": f"kiln {who} memory does not grow over a {minutes}-min soak with a deploy every "
                               f"{s.get('deploy_every_s')} s (last-5-min median RSS ≤ first-5-min median after warm-up "
                               f"+ {MEDIAN_LIMIT:.0%}, slope < {SLOPE_LIMIT:g} MiB/h)",
                     "measured": f"{measured}; over {d.get('done', 0)} deploys", "met": ok and bool(d.get("done"))})
    failed = [x for x in s.get("deploys", []) if x["exit"]]
    rows.append({"target": "every `kiln deploy` of the soak succeeds (agent and serve running)",
                 "measured": f"{len(failed)} of {d.get('done', 0)} failed" + (f": {_causes(failed)}" if failed else ""),
                 "met": bool(d.get("done")) and not failed})
    load = s.get("load", {})
    rows.append({"target": "0 failed requests under open-loop load through the soak",
                 "measured": f"{load.get('failed', '?')} failed of {load.get('sent', 0):,} ({load.get('failures') or 'none'})",
                 "met": bool(load.get("sent")) and load.get("failed") == 0})
    led = result.get("ledger", {})
    cps = led.get("checkpoints", [])
    if cps:
        last = cps[-1]
        worst = max(max(c["releases"]["seconds"], c["releases_json"]["seconds"]) for c in cps)
        rows.append({"target": "ledger after 1,000 deploys: `kiln releases` (and --json) under 1 s (median of 3 runs)",
                     "measured": f"after {last['deploys']} deploys: {last['bytes']:,} bytes "
                                 f"({led.get('bytes_per_deploy', '?')} bytes/deploy); kiln releases "
                                 f"{last['releases']['seconds']} s, --json {last['releases_json']['seconds']} s "
                                 f"(at 0 deploys {cps[0]['releases']['seconds']} s and {cps[0]['releases_json']['seconds']} s; "
                                 f"slowest at any checkpoint {worst} s); {len(led.get('failed', []))} deploys failed"
                                 + (f": {_causes(led['failed'])}" if led.get("failed") else ""),
                     "met": last["deploys"] >= 1000 and max(last["releases"]["seconds"], last["releases_json"]["seconds"]) < 1.0})
    return rows


def headline(result: dict) -> list[str]:
    out = []
    s = result.get("soak", {})
    for who in ("agent", "serve"):
        g = s.get("growth", {}).get(who)
        if g:
            out.append(f"kiln {who} over {s['seconds_planned'] / 60:.0f} min, a deploy every {s['deploy_every_s']} s: "
                       f"{no_growth(g)[1]}")
    if s.get("load"):
        out.append(f"soak load: {s['load']['failed']} failed of {s['load']['sent']:,} requests; "
                   f"{s['deploy_summary']['done']} deploys, {s['deploy_summary']['failed']} failed")
    led = result.get("ledger", {})
    if led.get("checkpoints"):
        last = led["checkpoints"][-1]
        out.append(f"ledger after {last['deploys']} deploys: {last['bytes']:,} bytes ({led.get('bytes_per_deploy')} "
                   f"bytes/deploy), kiln releases {last['releases']['seconds']} s, status {last['status']['seconds']} s")
    return out


def bursts(s: dict, gap: float = 5.0) -> list[dict]:
    """The load's failures grouped into bursts (no two failures of a burst more than `gap` s apart), in UTC."""
    out: list[dict] = []
    for t, kind in s.get("load", {}).get("failed_at", []):
        if out and t - out[-1]["last"] <= gap:
            out[-1]["last"] = t
            out[-1]["kinds"][kind] = out[-1]["kinds"].get(kind, 0) + 1
        else:
            out.append({"first": t, "last": t, "kinds": {kind: 1}})
    at = s.get("t0_epoch", 0)
    return [{"from": datetime.fromtimestamp(at + b["first"], UTC).strftime("%H:%M:%S"),
             "to": datetime.fromtimestamp(at + b["last"], UTC).strftime("%H:%M:%S"), "t": round(b["first"]),
             "failed": sum(b["kinds"].values()), "kinds": b["kinds"]} for b in out]


def during_deploys(s: dict) -> int:
    """How many load failures were due while a deploy ran (or within 1 s after it)."""
    spans = [(d["t"], d["t"] + d["seconds"] + 1) for d in s.get("deploys", [])]
    return sum(1 for t, _ in s.get("load", {}).get("failed_at", []) if any(a <= t <= b for a, b in spans))


def by_window(s: dict, who: str, minutes: float = 5) -> list[dict]:
    """Median RSS and USS of `who` in each `minutes` window of the soak: whether a rise is a step or a trend."""
    samples, out, lo = s.get("samples", []), [], 0.0
    while samples and lo <= samples[-1]["t"]:
        w = [x[who] for x in samples if lo <= x["t"] < lo + minutes * 60 and x[who]["processes"]]
        if w:
            out.append({"from_min": round(lo / 60), "to_min": round(lo / 60 + minutes),
                        "rss": round(statistics.median(m["rss_kb"] for m in w) / 1024, 1),
                        "uss": round(statistics.median(m["uss_kb"] for m in w) / 1024, 1)})
        lo += minutes * 60
    return out


def _mem_rows(g: dict) -> list[str]:
    rows = []
    for key in ("rss", "pss", "uss"):
        m = g.get(key)
        if m:
            rows.append(f"| {key.upper()} | {m['start_mib']} | {m['end_mib']} | {m['max_mib']} | {m['slope_mib_per_h']} | "
                        f"{m['first_window_median_mib']} | {m['last_window_median_mib']} |")
    return rows


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    p = result["provenance"]
    lines = [f"# kiln soak: memory of agent and serve, ledger growth ({result['started']} → {result.get('finished', '…')})",
             "", f"Command: `{result['command']}`. Measured at commit `{p['commit'][:12]}`, "
             + ("**dirty tree**." if p["dirty"] else "clean tree.")
             + f" Load average at start: {result['loadavg_start']}.", ""]
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in targets(result)]
    s = result.get("soak", {})
    if s.get("growth"):
        lines += ["", f"## Memory soak ({s['seconds_planned'] / 60:.0f} min, a deploy every {s['deploy_every_s']} s)", "",
                  f"Samples every {s['sample_every_s']} s; warm-up {s['warmup_s']:.0f} s (start = first sample after it); "
                  f"windows of {s['window_s']:.0f} s for the medians. Slope: least squares over the samples after warm-up. "
                  "Each figure sums the process and its children (none were seen unless `processes` says otherwise). "
                  "RSS counts every page the process maps; USS only its private pages; PSS shares each shared page among "
                  "the processes mapping it, so it also moves with how many other Python processes (each `kiln deploy`) "
                  "map the same libraries at the moment of the sample."]
        for who in ("agent", "serve"):
            g = s["growth"][who]
            if not g:
                continue
            lines += ["", f"### kiln {who}", "", "| memory | start MiB | end MiB | max MiB | slope MiB/h | first-window median | "
                      "last-window median |", "|---|---|---|---|---|---|---|", *_mem_rows(g), "",
                      "Median RSS (and USS) by window of the soak, MiB: " + ", ".join(
                          f"{m['from_min']}–{m['to_min']} min {m['rss']} ({m['uss']})" for m in by_window(s, who)), "",
                      f"Threads (start, max, end): {g['threads']}; open fds: {g['fds']}; processes in the tree: {g['processes']}; "
                      f"exit code when stopped: {s.get('exit_codes', {}).get(who)}."]
        d, load = s["deploy_summary"], s.get("load", {})
        lines += ["", f"Deploys: {d['done']} done, {d['failed']} failed; median {d['median_s']} s, max {d['max_s']} s "
                  f"(each a new message, so a new image baked); {d.get('late', 0)} started late because the one before "
                  f"took longer than {s['deploy_every_s']:g} s.",
                  f"Open-loop load ({s['rate']:g}/s, 2 s timeout): {load.get('sent', 0):,} sent, {load.get('failed')} failed "
                  f"({load.get('failures') or 'none'}); p50 {load.get('p50_ms')} ms, p99 {load.get('p99_ms')} ms, max "
                  f"{load.get('max_ms')} ms."]
        kept = len(load.get("failed_at", []))
        lines += [f"Load failures during a deploy (from its start to 1 s after its end): {during_deploys(s)} of the {kept} "
                  "whose time the run kept" + (f" (it kept the first {kept} of {load.get('failed')})" if kept < (load.get("failed") or 0)
                                               else "") + ". Failures grouped in bursts (no gap over 5 s) below. "
                  f"The client closes a pooled connection idle {s.get('client_max_idle_s', MAX_IDLE)} s rather than reuse it (the router closes one idle 10 s: `timeout http-keep-alive 10s`)."]
        for b in bursts(s):
            lines.append(f"- failures {b['from']}–{b['to']} UTC (soak second {b['t']}): {b['failed']} ({b['kinds']})")
        for who in ("agent", "serve"):
            lg = s.get(f"{who}_log") or {}
            if lg:
                first = lg["first_traceback"][-1] if lg["first_traceback"] else ""
                lines.append(f"kiln {who}'s log: {lg['lines']} lines, {lg['tracebacks']} lines opening a traceback"
                             + (f", {lg['errors']} `ERROR:` lines" if "errors" in lg else "")
                             + (f" (the first ends `{first}`)" if first else "") + ".")
        if s.get("api"):
            a, e = s["api"], s["sse"]
            lines += [f"serve's API polled: {a['requests']} requests, {a['failed']} failed, p50 {a['p50_ms']} ms, p99 "
                      f"{a['p99_ms']} ms, max {a['max_ms']} ms. SSE client: {e['connects']} connection(s), events by kind "
                      f"{e['events']}, errors {len(e['errors'])}."]
        if s.get("plot"):
            lines += ["", f"![memory over time]({s['plot']})"]
    led = result.get("ledger", {})
    if led.get("checkpoints"):
        lines += ["", f"## Ledger growth (1 replica, each deploy an environment value changed; after {led['done']} deploys"
                  + (", stopped by the deadline" if led.get("stopped_by_deadline") else "") + ")", "",
                  f"{len(led['failed'])} deploys failed. Bytes per deploy (last checkpoint vs the first deploy's): "
                  f"{led.get('bytes_per_deploy')}.", "",
                  "| deploys | ledger bytes (db, -wal, -shm) | deploy median s (max) since previous | kiln releases s | "
                  "releases --json s | releases --json -n all s (bytes) | kiln status s |", "|---|---|---|---|---|---|---|"]
        for c in led["checkpoints"]:
            lines.append(f"| {c['deploys']} | {c['bytes']:,} ({', '.join(f'{k} {v:,}' for k, v in c['files'].items())}) | "
                         f"{c['deploy_median_s']} ({c['deploy_max_s']}) | {c['releases']['seconds']} | "
                         f"{c['releases_json']['seconds']} | {c['releases_all_json']['seconds']} "
                         f"({c['releases_all_json']['bytes']:,}) | {c['status']['seconds']} |")
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")


def plot(result: dict) -> str | None:
    """RSS and USS of both processes over time (optional: only if matplotlib imports)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    samples = result.get("soak", {}).get("samples", [])
    if not samples:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for who in ("agent", "serve"):
        for key, style in (("rss_kb", "-"), ("uss_kb", "--")):
            ax.plot([s["t"] / 60 for s in samples], [s[who][key] / 1024 for s in samples], style,
                    label=f"{who} {key[:3].upper()}")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("kiln agent and serve memory, a deploy every 20 s")
    fig.tight_layout()
    fig.savefig(RESULTS / "soak-memory.png", dpi=90)
    plt.close(fig)
    return "soak-memory.png"


# --- main ------------------------------------------------------------------------------------------


def cleanup(app: BenchApp) -> None:
    run = app.kiln("destroy", "-e", "production", check=False, timeout=300)
    if run.returncode:
        log(f"cleanup: kiln destroy {app.name} exited {run.returncode}: {run.stderr.strip()[-300:]}")
    remove_images([f"kiln/{app.name}"], [])
    left = [c.name for c in app.containers()]
    if left:
        log(f"cleanup: containers of {app.name} left: {left}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 2-min soak and 20 ledger deploys (a smoke test)")
    ap.add_argument("--minutes", type=float, help="soak length (default 30; --quick 2)")
    ap.add_argument("--deploys", type=int, help="ledger deploys (default 1000; --quick 20)")
    ap.add_argument("--deadline", help="HH:MM UTC after which the ledger run starts no more deploys")
    ap.add_argument("--only", choices=["soak", "ledger"],
                    help="run one of the two, as its own process; writes bench/results/soak-PART.json (see --combine)")
    ap.add_argument("--combine", action="store_true", help="write soak.{md,json} from the two parts' files")
    ap.add_argument("--report", action="store_true", help="rewrite soak.md from soak.json")
    ap.add_argument("--note", action="append", default=[], help="a sentence for the report (repeatable)")
    args = ap.parse_args(argv)
    if args.report:  # the summaries again from the raw samples, then the report
        result = json.loads((RESULTS / "soak.json").read_text())
        if "soak" in result:
            summarize_soak(result["soak"], "--quick" in result["command"])
        result["targets"] = targets(result)
        write(result)
        return 0
    if args.combine:
        return combine(args.note)
    minutes = args.minutes or (2 if args.quick else 30)
    target = args.deploys or (20 if args.quick else 1000)
    deadline = None
    if args.deadline:
        h, m = map(int, args.deadline.split(":"))
        deadline = datetime.now(UTC).replace(hour=h, minute=m, second=0, microsecond=0).timestamp()

    from bench.facts import provenance
    result: dict = {"command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "started": now(), "provenance": provenance(),
                    "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                    "notes": [*args.note, "The machine was shared (2 cores) with other benchmark runs; times are indicative, "
                              "counts and sizes are what matters. Neither part held /tmp/kiln-heavy.lock."]}
    root = Path(tempfile.mkdtemp(prefix="kiln-soak-"))
    tag = os.getpid() % 100000
    apps = {}
    if args.only != "ledger":
        apps["soak"] = SoakApp.make(root, f"ksoak{tag}", replicas=2)
    if args.only != "soak":
        apps["ledger"] = SoakApp.make(root, f"ksoakl{tag}", replicas=1)
    errors: dict[str, str] = {}

    def guarded(name: str, fn, *a) -> None:
        try:
            fn(*a)
        except Exception as exc:  # noqa: BLE001 — recorded in the report; the other part goes on
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"{name} failed: {errors[name]}")

    threads = []
    if "ledger" in apps:
        threads.append(threading.Thread(target=guarded, args=("ledger", ledger, apps["ledger"], target,
                                                              5 if args.quick else 100, deadline, result)))
    if "soak" in apps:
        threads.append(threading.Thread(target=guarded, args=("soak", soak, apps["soak"], minutes * 60, 20.0,
                                                              5.0 if args.quick else 10.0, 50.0, result)))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for app in apps.values():
            cleanup(app)
        shutil.rmtree(root, ignore_errors=True)
    if "soak" in result:
        summarize_soak(result["soak"], args.quick)
        result["soak"]["plot"] = plot(result)
    if "ledger" in result:
        summarize_ledger(result["ledger"])
    result["notes"] += [f"{name} part stopped by an error: {msg}" for name, msg in errors.items()]
    result["finished"] = now()
    result["targets"] = targets(result)
    if args.only:
        (RESULTS / f"soak-{args.only}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    else:
        write(result)
    for line in headline(result):
        log(line)
    return 1 if errors else 0


def combine(notes: list[str]) -> int:
    """One report from `--only soak` and `--only ledger` run side by side as two processes."""
    paths = [RESULTS / "soak-soak.json", RESULTS / "soak-ledger.json"]
    parts = [json.loads(p.read_text()) for p in paths]
    result = {"command": " & ".join(p["command"] for p in parts) + " (side by side), then python -m bench.soak --combine",
              "started": min(p["started"] for p in parts), "finished": max(p["finished"] for p in parts),
              "provenance": parts[0]["provenance"], "loadavg_start": parts[0]["loadavg_start"],
              "notes": list(dict.fromkeys([*(n for p in parts for n in p["notes"]), *notes])),
              **{k: p[k] for p in parts for k in ("soak", "ledger") if k in p}}
    if len({p["provenance"]["commit"] for p in parts}) > 1:
        result["notes"].append(f"the parts ran at different commits: {[p['provenance'] for p in parts]}")
    result["targets"] = targets(result)
    write(result)
    for p in paths:
        p.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
