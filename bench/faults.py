"""`bench/faults`: the fault-injection suite. Under steady wrk load through kiln's router:

1. kiln killed with SIGKILL at random points of rollouts (a random strategy each run; either at
   one of kiln's named fault points, KILN_FAULT=started|routed|draining|switched, or from outside
   after a random delay), then `kiln deploy` settles it;
2. dockerd restarted during steady state, then `kiln deploy`;
3. bad releases of each kind: exits at start, never healthy, failing smoke check, 5xx canary.

Each run checks what the design promises: 0 failed requests (except the 5xx canary, whose
failures are bounded by its traffic share, and the dockerd restart, where the design promises
nothing yet: it is measured and reported), no orphan containers, a consistent ledger (no rollout
left running or paused, the lock free) and the right release serving. Writes
bench/results/faults.{md,json}; exits 1 if any check failed."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from bench.harness import (
    RESULTS,
    BenchApp,
    Wrk,
    engine,
    guarded,
    heavy,
    log,
    remove_images,
    remove_labelled,
    under_load,
)

POINTS = {"rolling": ["started", "routed", "draining"],
          "blue-green": ["started", "routed", "switched", "draining"],
          "canary": ["started", "routed", "switched", "draining"]}


def policy(strategy: str) -> dict:
    if strategy == "blue-green":
        return {"strategy": "blue-green", "smoke": [{"path": "/health", "status": 200}]}
    if strategy == "canary":
        return {"strategy": "canary", "steps": [{"weight": 20, "pause": "1s"}, {"weight": 50, "pause": "1s"}]}
    return {"strategy": "rolling", "max_surge": random.choice(["100%", 1]), "max_unavailable": 0}


def check(app: BenchApp, replicas: int, message: str | None = None) -> list[str]:
    """Problems with the environment now: wrong instances, orphans, an unsettled ledger."""
    problems = []
    st = app.kiln_json("status")
    serving = (st.get("release") or {}).get("number")
    inst = st.get("instances", [])
    if [(i["release"], i["health"], i["in_router"]) for i in inst] != [(serving, "healthy", True)] * replicas:
        problems.append(f"instances are not {replicas} healthy, routed instances of v{serving}: {inst}")
    if st.get("waiting"):
        problems.append(f"rollouts waiting: {st['waiting']}")
    live = app.containers()
    roles = sorted(c.labels.get("kiln.role", "?") for c in live)
    if roles != ["instance"] * replicas + ["router"]:
        problems.append(f"orphan or missing containers: {[(c.name, c.status) for c in live]}")
    if any(c.status != "running" for c in live):
        problems.append(f"containers not running: {[(c.name, c.status) for c in live if c.status != 'running']}")
    states = [r["state"] for r in app.kiln_json("rollout", "list")]
    if "running" in states or "paused" in states:
        problems.append(f"ledger: a rollout is left {states}")
    lock = app.kiln_json("lock", "status")
    if lock is not None:
        problems.append(f"ledger: the lock is still held: {lock}")
    if message is not None:
        body = _get(app.url)
        if f"message={message}" not in body:
            problems.append(f"serving {body.strip()!r}, expected message={message}")
    return problems


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()
    except OSError as exc:
        return f"({exc})"


def schedule(runs: int, rng: random.Random) -> Iterator[tuple[str, str | None, float | None]]:
    """(strategy, named point or None, delay of an outside kill or None), endlessly: first every
    named point of every strategy and one outside kill per strategy (so each is covered), then
    random ones."""
    for strategy, points in POINTS.items():
        for point in points:
            yield strategy, point, None
    for strategy in POINTS:
        yield strategy, None, round(rng.uniform(0.8, 3.0), 2)
    while True:
        strategy = rng.choice(list(POINTS))
        if rng.random() < 0.5:
            yield strategy, rng.choice(POINTS[strategy]), None
        else:
            yield strategy, None, round(rng.uniform(0.3, 4.0), 2)


def kill_runs(app: BenchApp, runs: int, rng: random.Random) -> list[dict]:
    """Kill runs until at least `runs` of them interrupted a rollout by the ledger's account (the
    rollout the killed `kiln deploy` opened is left `running`) and every (strategy, named point)
    pair and an outside kill of each strategy has interrupted one; at most 3 x as many attempts.
    A kill that came before the rollout opened or after it ended is recorded but not counted."""
    out: list[dict] = []
    need = {(s, f"KILN_FAULT={p}") for s, ps in POINTS.items() for p in ps} | {(s, "outside") for s in POINTS}
    plan = schedule(runs, rng)
    attempt = 0
    budget = 3 * max(runs, len(need))
    while attempt < budget:
        covered = {(r["strategy"], r["kind"]) for r in out if r["interrupted"]}
        if sum(1 for r in out if r["interrupted"]) >= runs and need <= covered:
            break
        strategy, point, delay = next(plan)
        kind = f"KILN_FAULT={point}" if point else "outside"
        if (strategy, kind) in covered and not need <= covered and attempt < len(need) * 2:
            continue  # cover what is missing first
        attempt += 1
        app.set_rollout(**policy(strategy))
        message = f"fault run {attempt}"
        app.set_message(message)
        app.image_tag()
        before = app.kiln_json("rollout", "list")
        last_id = before[0]["id"] if before else 0
        row = {"run": attempt, "strategy": strategy, "kind": kind,
               "kill": f"KILN_FAULT={point}" if point else f"kill -9 after {delay}s"}
        with heavy(f"fault run {attempt}: {strategy}, {row['kill']}"):
            def crash_and_recover(point: str | None = point, delay: float | None = delay) -> tuple:
                proc = app.popen("deploy", extra_env={"KILN_FAULT": point} if point else None)
                if delay is not None:
                    try:
                        proc.wait(timeout=delay)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=180)
                ledger = app.kiln_json("rollout", "list")
                began = time.monotonic()
                run = app.kiln("deploy", check=False)
                return proc.returncode, ledger, time.monotonic() - began, run
            load, (code, ledger, recovery, run) = under_load(app.url, crash_and_recover)
            problems = []
            if run.returncode != 0:
                problems.append(f"the recovery `kiln deploy` exited {run.returncode}: "
                                + " / ".join(run.stderr.strip().splitlines()[-8:]))
                app.kiln("deploy", check=False)  # a clean start for the next run
                message = None  # the release was aborted: the previous one serves
            problems += check(app, 2, message)
        killed = code == -signal.SIGKILL
        opened = [r for r in ledger if r["id"] > last_id]
        left = opened[0] if opened else None
        interrupted = killed and left is not None and left["state"] == "running"
        row.update(killed=killed, exit=code, interrupted=interrupted,
                   rollout_left=(f"{left['state']} (phase {left.get('phase')})" if left else "none opened"),
                   recovery_seconds=round(recovery, 2), **load.row(), problems=problems)
        if load.failed:
            problems.append(f"{load.failed} failed requests")
        row["ok"] = not problems
        log(f"run {attempt}: {row['kill']} ({strategy}) exit {code}, interrupted {interrupted} ({row['rollout_left']}), "
            f"{load.requests} requests {load.failed} failed, problems: {problems or 'none'}")
        out.append(row)
    return out


def _dockerd() -> tuple[int, list[str], str]:
    pid = int(Path("/var/run/docker.pid").read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    logfile = os.readlink(f"/proc/{pid}/fd/1")
    return pid, [a.decode() for a in argv], logfile


def _exited(pid: int) -> bool:
    """Whether process `pid` has exited: gone, or a zombie (a dockerd an earlier restart started is
    this process's child, and stays in /proc until reaped: reap it)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state == "Z"


def restart_dockerd() -> tuple[float, float | None]:
    """Stop dockerd (SIGTERM, as a service manager does) and start it again the same way;
    seconds until the engine answers again, and until the old dockerd had exited (None under systemd)."""
    began = time.monotonic()
    exited = None
    if Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=120)
    else:
        pid, argv, logfile = _dockerd()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not _exited(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        exited = time.monotonic() - began
        target = logfile if logfile.startswith("/") and not logfile.startswith("/dev/") else "/var/log/kiln-dockerd.log"
        with open(target, "a") as fh:
            subprocess.Popen(argv, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            engine().ping()
            return time.monotonic() - began, exited
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("dockerd did not come back within 90 s")


DAEMON_JSON = Path("/etc/docker/daemon.json")


def live_restore_blocker() -> str | None:
    """Why dockerd's live-restore cannot be turned on here for a measurement, or None. Docker
    refuses it on a Swarm node ("--live-restore daemon configuration is incompatible with swarm
    mode": `docker swarm init` fails, and a node restarted with it does not start its cluster
    component), and this machine's dockerd is the test cluster's manager while that cluster is up."""
    info = engine().info()
    state = (info.get("Swarm") or {}).get("LocalNodeState", "?")
    if state != "inactive":
        return (f"this dockerd is a Swarm node (state {state}), and Docker does not allow live-restore on a Swarm "
                "node; leaving the swarm would break the test cluster")
    return None


def _reload_dockerd(config: dict) -> None:
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps(config) + "\n")
    os.kill(int(Path("/var/run/docker.pid").read_text().strip()), signal.SIGHUP)  # the current dockerd's pid
    _await_live_restore(bool(config["live-restore"]))


@contextmanager
def live_restore() -> Iterator[dict]:
    """live-restore on in /etc/docker/daemon.json (a reloadable option: SIGHUP, no restart) for the
    block; then off again, and the file as it was. A reload keeps the running value of a key the
    file does not set, so "off" is written out before the original file is put back. A failure to
    turn it off is yielded state's `revert_error` (and logged), not an exception that loses the row."""
    before = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else None
    config = json.loads(before) if before else {}
    state: dict = {}
    try:
        _reload_dockerd({**config, "live-restore": True})
        yield state
    finally:
        try:
            _reload_dockerd({**config, "live-restore": bool(config.get("live-restore"))})
        except Exception as exc:  # noqa: BLE001 — say so loudly, keep the measurement
            state["revert_error"] = f"{type(exc).__name__}: {exc}"
            log(f"ERROR: dockerd's live-restore may still be on ({exc}); set it off in {DAEMON_JSON} and SIGHUP dockerd")
        finally:
            if before is None:
                DAEMON_JSON.unlink(missing_ok=True)
            else:
                DAEMON_JSON.write_text(before)


def _await_live_restore(want: bool) -> None:
    deadline = time.monotonic() + 20
    while engine().info().get("LiveRestoreEnabled") != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not reload live-restore={want} from {DAEMON_JSON}")
        time.sleep(0.2)


def dockerd_restart(app: BenchApp, with_live_restore: bool = False) -> dict:
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    row: dict = {"live_restore": with_live_restore}
    if with_live_restore and (why := live_restore_blocker()):
        log(f"dockerd restart with live-restore: not measured: {why}")
        return {**row, "skipped": why, "ok": True}
    # With live-restore on, no test cluster may come up meanwhile (`docker swarm init` would fail): hold its lock too.
    from bench.cluster import session_lock
    with heavy("fault: dockerd restart during steady state" + (" (live-restore on)" if with_live_restore else "")), \
            (session_lock() if with_live_restore else nullcontext()), \
            (live_restore() if with_live_restore else nullcontext({})) as lr:
        # `kiln agent` runs throughout, as it would under systemd: it must restore service by itself.
        with app.agent() as agent:
            row = _dockerd_restart(app, row, agent)
    if lr.get("revert_error"):
        row["problems"].append(f"live-restore not turned off again: {lr['revert_error']}")
        row["ok"] = False
    return row


def _dockerd_restart(app: BenchApp, row: dict, agent: subprocess.Popen) -> dict:
    load = Wrk(app.url)
    time.sleep(2)
    back, exited = restart_dockerd()
    row["engine_back_seconds"], row["dockerd_exited_seconds"] = round(back, 2), exited and round(exited, 2)
    restarted = time.monotonic()
    # The agent should restore service by itself: wait up to 10 s and look.
    answered = None
    while time.monotonic() - restarted < 10:
        if "message=" in _get(app.url):
            answered = round(time.monotonic() - restarted, 2)
            break
        time.sleep(0.25)
    time.sleep(max(0.0, 10 - (time.monotonic() - restarted)))
    st = app.kiln_json("status")
    row["after_restart"] = {"serving_by_itself_after_s": answered,
                            "router": st.get("router"), "instances": st.get("instances")}
    row["during_restart"] = load.stop().row()
    # A kiln deploy afterwards: nothing should be left to do.
    load = Wrk(app.url)
    time.sleep(1)
    began = time.monotonic()
    run = app.kiln("deploy", check=False)
    row["kiln_deploy"] = {"exit": run.returncode, "seconds": round(time.monotonic() - began, 2),
                          "stderr_tail": run.stderr.strip().splitlines()[-3:]}
    time.sleep(1)
    row["during_kiln_deploy"] = load.stop().row()
    load2, _ = under_load(app.url, lambda: time.sleep(3))
    row["after_kiln_deploy"] = load2.row()
    agent.terminate()  # its passes hold the environment's lock for moments; the checks want it free
    agent.wait(timeout=60)
    problems = check(app, 2)
    if answered is None:
        problems.append("the agent did not restore service within 10 s of the engine's return")
    if run.returncode != 0:
        problems.append(f"kiln deploy after the restart exited {run.returncode}")
    if load2.failed:
        problems.append(f"{load2.failed} failed requests after kiln deploy restored service")
    row["problems"] = problems
    row["ok"] = not problems
    log(f"dockerd restart: {json.dumps(row)[:800]}")
    return row


BAD = [
    ("exits at start", {"strategy": "rolling"}, ("def main():", "def main():\n    raise SystemExit('boom: no DATABASE_URL')"), None),
    ("never healthy", {"strategy": "rolling"},
     ('self._send(503 if self.server.stopping else 200, "ok\\n")', 'self._send(503, "not yet\\n")'), "4s"),
    ("failing smoke check", {"strategy": "blue-green", "smoke": [{"path": "/", "body": "this text is not there"}]}, None, None),
    ("5xx canary", {"strategy": "canary", "steps": [{"weight": 10, "pause": "10s"}, {"weight": 50, "pause": "10s"}]},
     ('            self._send(200, f"{GREETING} from', '            self._send(500, f"{GREETING} from'), None),
]


def bad_releases(app: BenchApp) -> list[dict]:
    out = []
    for name, pol, code, deadline in BAD:
        serving = app.kiln_json("status")["release"]["number"]
        message = _get(app.url).split("message=")[-1].strip()
        app.set_rollout(**pol)
        app.set_message(f"bad: {name}")
        app.set_healthcheck(deadline=deadline or "30s")
        if code:
            app.set_code(*code)
        with heavy(f"fault: bad release that {name}"):
            try:
                load, run = under_load(app.url, lambda: app.kiln("deploy", check=False))
            finally:
                app.restore_code()
                app.set_message(message)
                app.set_healthcheck(deadline="30s")
            show = app.kiln_json("rollout", "show")
            problems = check(app, 2, message)
        now = app.kiln_json("status")["release"]["number"]
        if now != serving:
            problems.append(f"v{now} serves, expected v{serving} to keep serving")
        if run.returncode != 1 or show["state"] != "aborted":
            problems.append(f"deploy exited {run.returncode}, rollout {show['state']}: expected 1 and aborted")
        promised_zero = name != "5xx canary"
        if promised_zero and load.failed:
            problems.append(f"{load.failed} failed requests")
        if not promised_zero and load.socket_errors:
            problems.append(f"{load.socket_errors} socket errors")
        row = {"bad release": name, "exit": run.returncode, "rollout": show["state"], "reason": show.get("reason", ""),
               "deploy_seconds": round(run.seconds, 2), **load.row(), "promised": "0 failed" if promised_zero
               else "failures bounded by the canary's share during its first step", "problems": problems,
               "ok": not problems}
        log(f"bad release {name}: {load.requests} requests, {load.failed} failed; problems: {problems or 'none'}")
        out.append(row)
    return out


def _kinds(errors: dict | None) -> str:
    nonzero = {k: v for k, v in (errors or {}).items() if v}
    return f": {', '.join(f'{k} {v}' for k, v in nonzero.items())}" if nonzero else ""


def _provenance(r: dict) -> str:
    p = r.get("provenance")
    if not p:
        return "Tree state: not recorded."
    return (f"Measured at commit `{p['commit'][:12]}`, "
            + (f"**with a dirty tree** (changed: {', '.join(p['changed'])})." if p["dirty"] else "clean tree."))


def headline(r: dict) -> list[str]:
    """One line per fault kind, every failed request counted (the dockerd restarts included)."""
    out = []
    kills = [k for k in r.get("kills", []) if k.get("interrupted")]
    if r.get("kills"):
        out.append(f"kill -9 mid-rollout: {len(kills)} kills interrupted a rollout (of {len(r['kills'])} attempts); "
                   f"{sum(k['failed'] for k in kills)} failed of {sum(k['requests'] for k in kills):,} requests; "
                   f"{sum(1 for k in kills if not k['ok'])} runs with a problem")
    for key, label in (("dockerd", "dockerd restart, live-restore off"), ("dockerd_live_restore", "dockerd restart, live-restore on")):
        d = r.get(key)
        if d and d.get("skipped"):
            out.append(f"{label}: not measured ({d['skipped']})")
        elif d:
            a = d.get("during_restart", {})
            back = (d.get("after_restart") or {}).get("serving_by_itself_after_s")
            out.append(f"{label}: {a.get('failed', 0):,} failures (non-2xx + socket errors) beside {a.get('requests', 0):,} "
                       "answered requests, longest gap "
                       f"{a.get('max_gap_ms', 0)} ms; serving again by itself "
                       + (f"{back} s after the engine was back" if back is not None else "**not within 10 s**"))
    bad = r.get("bad", [])
    if bad:
        out.append(f"bad releases: {sum(1 for b in bad if b['rollout'] == 'aborted')} of {len(bad)} aborted; "
                   + "; ".join(f"{b['bad release']}: {b['failed']} failed" for b in bad))
    return out


def write(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    lines = ["# kiln fault-injection report", "",
             f"Run {r['started']} – {r.get('finished', '(unfinished)')} with `{r['command']}` (seed {r['seed']}); "
             f"kiln commit {r.get('commit', '?')}. wrk sends keep-alive load (16 connections) through kiln's router "
             "for every run. Every figure was measured in this run.", "", _provenance(r), ""]
    for note in r.get("notes", []):
        lines += [note, ""]
    lines += ["## Headline", "", *[f"- {h}" for h in headline(r)], ""]
    kills = r.get("kills", [])
    if kills:
        counted = [k for k in kills if k.get("interrupted")]
        total = sum(k["requests"] for k in counted)
        failed = sum(k["failed"] for k in counted)
        bad = sum(1 for k in counted if not k["ok"])
        cover = sorted({f"{k['strategy']} {k['kind']}" for k in counted})
        lines += ["## kill -9 of kiln mid-rollout, then `kiln deploy`", "",
                  f"**{len(counted)} kills interrupted a rollout** by the ledger's account (the rollout the killed "
                  f"`kiln deploy` opened was left `running`), of {len(kills)} attempts; over those runs {total:,} requests, "
                  f"**{failed} failed**; {bad} of them with a problem. Covered: {', '.join(cover)}. The other attempts "
                  "(kiln killed before its rollout opened or after it ended, or not killed at all) are listed but not "
                  "counted.", "",
                  "| run | strategy | kill | interrupted a rollout | rollout after the kill | recovery deploy | requests | failed | gap | checks |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for k in kills:
            said = "yes" if k.get("interrupted") else ("no: killed, but no rollout left running" if k["killed"] else "no: not killed (finished first)")
            lines.append(f"| {k['run']} | {k['strategy']} | {k['kill']} | {said} | "
                         f"{k['rollout_left'] or '–'} | {k['recovery_seconds']:.1f} s | {k['requests']:,} | {k['failed']} | "
                         f"{k['max_gap_ms']} ms | {'ok' if k['ok'] else '; '.join(k['problems'])} |")
        lines += ["", "Checks after each run: exactly 2 healthy, routed instances of the serving release and the "
                  "router (no orphan), no rollout left running or paused, the lock free, the new release serving."]
    for key, title in (("dockerd", "dockerd restarted during steady state (live-restore off, Docker's default)"),
                       ("dockerd_live_restore", "dockerd restarted during steady state, live-restore on")):
        d = r.get(key)
        if not d:
            continue
        lines += ["", f"## {title}", ""]
        if d.get("skipped"):
            lines += [f"Not measured: {d['skipped']}."]
            continue
        a, b, c = d.get("during_restart", {}), d.get("during_kiln_deploy", {}), d.get("after_kiln_deploy", {})
        ar = d.get("after_restart", {})
        back = ar.get("serving_by_itself_after_s")
        lines += [f"**{a.get('failed', 0):,} failures** (non-2xx answers and socket errors; wrk reconnects at once after a "
                  "socket error, so a closed port yields thousands a second) beside "
                  f"{a.get('requests', 0):,} answered requests, from 2 s before the restart to "
                  f"10 s after the engine answered again (longest gap without a 2xx {a.get('max_gap_ms', 0)} ms; "
                  f"non-2xx {a.get('non_2xx', 0)}, socket errors {a.get('socket_errors', 0)}{_kinds(a.get('errors'))}).", "",
                  f"- dockerd answered again {d.get('engine_back_seconds')} s after the restart began"
                  + (f" (the old one had exited after {d['dockerd_exited_seconds']} s)" if d.get("dockerd_exited_seconds") else "")
                  + (" (live-restore: containers kept running while it was down)." if d.get("live_restore")
                     else " (no live-restore: a dockerd restart stops every container, kiln's router included)."),
                  f"- Served again (kiln agent running) within 10 s after: "
                  f"{'yes, after ' + str(back) + ' s' if back is not None else '**no**'}; "
                  f"router then: {json.dumps(ar.get('router'))}; instances: {len(ar.get('instances') or [])}.",
                  f"- Then `kiln deploy` (exit {d.get('kiln_deploy', {}).get('exit')}, {d.get('kiln_deploy', {}).get('seconds')} s): "
                  f"{b.get('requests', 0):,} requests during it, {b.get('failed', 0)} failed, gap {b.get('max_gap_ms', 0)} ms; "
                  f"afterwards {c.get('requests', 0):,} requests, {c.get('failed', 0)} failed.",
                  f"- Checks after the deploy: {'ok' if d.get('ok') else '; '.join(d.get('problems', []))}."]
    if r.get("dockerd") or r.get("dockerd_live_restore"):
        lines += ["", "`kiln agent` ran throughout, as under systemd (`kiln agent install`): it reconnects when the engine "
                  "is back, restores the router's servers and replaces the instances that died with the engine. Without "
                  "live-restore requests fail while the engine is down, since the router container stops with it. "
                  "live-restore keeps containers running through a dockerd restart, but Docker refuses it on a Swarm node "
                  "(`--live-restore daemon configuration is incompatible with swarm mode`), and this machine's dockerd "
                  "is the test cluster's manager while that cluster is up: `scripts/prereqs.sh` turns it on only when "
                  "asked (`KILN_LIVE_RESTORE=1`) and the engine is not a Swarm node. The router runs on the host's "
                  "network, so HAProxy itself listens on the port: no docker-proxy (dockerd's userland proxy, a child "
                  "of dockerd that stops with it) stands between clients and the router. A run at bbf8ccb, when the "
                  "router's port was still published through docker-proxy, lost 40,583 requests with live-restore on. "
                  "The `kiln deploy` afterwards is a check that nothing is left to do."]
    bad = r.get("bad", [])
    if bad:
        lines += ["", "## Bad releases", "",
                  "| bad release | deploy exit | rollout | requests | non-2xx | socket errors | promised | checks | reason |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for b in bad:
            lines.append(f"| {b['bad release']} | {b['exit']} | {b['rollout']} | {b['requests']:,} | {b['non_2xx']} | "
                         f"{b['socket_errors']} | {b['promised']} | {'ok' if b['ok'] else '; '.join(b['problems'])} | "
                         f"{' '.join(b['reason'][:140].split()).replace('|', '/')} |")
    for group, msg in r.get("errors", {}).items():
        lines += ["", f"**{group} did not complete:**", "", "```", msg, "```"]
    for note in r.get("notes", []):
        lines += ["", note]
    (out / "faults.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/faults", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="kills that interrupt a rollout, by the ledger (default 10; "
                                                         "more runs if needed to cover every strategy and fault point)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--only", default="", help="comma-separated: kills,dockerd,dockerd_live_restore,bad")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--note", action="append", default=[], help="a sentence for the report, e.g. that the machine was "
                                                                   "shared with other work (repeatable)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    only = set(filter(None, args.only.split(",")))
    out = Path(args.out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    r: dict = {"command": "bench/faults " + " ".join(argv or sys.argv[1:]), "seed": seed,
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "errors": {}}
    r["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    from bench.facts import provenance
    r["provenance"] = provenance()
    r["notes"] = list(args.note)
    app = BenchApp.make(Path(tempfile.mkdtemp(prefix="kiln-faults-")), "kbfault")
    try:
        with heavy("faults: first deploy"):
            app.kiln("deploy")
        for name, fn in (("kills", lambda: kill_runs(app, args.runs, rng)), ("dockerd", lambda: dockerd_restart(app)),
                         ("dockerd_live_restore", lambda: dockerd_restart(app, with_live_restore=True)),
                         ("bad", lambda: bad_releases(app))):
            if only and name not in only:
                continue
            r[name] = guarded(r["errors"], name, fn)
            write(r, out)
    finally:
        with heavy("faults: cleanup"):
            remove_labelled()
            remove_images([f"kiln/{app.name}"], [])
        r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write(r, out)
        if out.resolve() == RESULTS.resolve():
            from bench import readme_table
            readme_table.main([])
    failed = [k for k in r.get("kills", []) if not k["ok"]] + [b for b in r.get("bad", []) if not b["ok"]]
    failed += [r[k] for k in ("dockerd", "dockerd_live_restore") if r.get(k) and not r[k]["ok"]]
    log(f"report: {out / 'faults.md'}; {len(failed)} runs with problems")
    return 1 if failed or r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
