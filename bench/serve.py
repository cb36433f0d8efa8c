"""`python -m bench.serve`: `kiln serve`'s control plane under load; writes
bench/results/serve.{md,json}.

- API latency: GET …/status and …/releases (50 newest) of random environments, one keep-alive
  client, with 10,000 releases (and as many succeeded rollouts) across 100 environments seeded
  into the sqlite ledger; status also asks the real dockerd for each environment's containers and
  router (there are none: the ledger's environments were seeded, not deployed). Goal: p99 ≤ 50 ms.
- 50 Server-Sent Events clients following a real rollout (`kiln deploy` of examples/hello, rolling,
  2 replicas): whether every client got every event, and how long after the ledger recorded an
  event each client had it; the deploy's time with the 50 followers against one without.
- The dashboard's page weight: the bytes of each page, its CSS and JS, and of the live view it
  fetches every second.

Run it alone on the machine (it uses the real dockerd): `flock /tmp/kiln-integration.lock
.venv/bin/python -m bench.serve`."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hello"
RESULTS = REPO / "bench" / "results"
LABEL = "kiln.test=bench-serve"
ENVS, PER_ENV = 100, 100
REQUESTS = 1000
FOLLOWERS = 50


def log(message: str) -> None:
    print(f"[bench.serve {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(pct(values, 50) * 1000, 2), "p95_ms": round(pct(values, 95) * 1000, 2),
            "p99_ms": round(pct(values, 99) * 1000, 2), "max_ms": round(max(values) * 1000, 2)}


def seed(home: Path) -> str:
    """10,000 releases of app "scale" across 100 environments, each with a succeeded rollout."""
    from kiln.ledger.store import Ledger
    from kiln.spec.loader import load_spec
    from kiln.spec.resolve import resolve

    home.mkdir(parents=True, exist_ok=True)
    db = home / "ledger.db"
    Ledger(f"sqlite:///{db}")  # the schema, through the store's own migrations
    base = resolve(load_spec(EXAMPLE / "kiln.yaml").spec, "production").model_dump(mode="json")
    at = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    rows, rollouts = [], []
    for e in range(ENVS):
        env = f"env-{e:02d}"
        config = json.dumps({**base, "app": "scale", "env": env, "port": 20000 + e}, sort_keys=True)
        for n in range(1, PER_ENV + 1):
            rows.append(("scale", env, n, f"sha256:{n:064x}", f"kiln/scale:{n:016x}", f"{n:064x}", config,
                         f"{n:064x}", f"{n:064x}", None, False, "", at))
            rollouts.append(("scale", env, n - 1 or None, n, "rolling", "succeeded", "", at, at, "done", "{}"))
    with sqlite3.connect(db) as con:
        con.executemany("INSERT INTO releases (app, env, number, image, image_tag, inputs_hash, config, config_digest,"
                        " spec_digest, \"commit\", dirty, note, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        con.executemany("INSERT INTO rollouts (app, env, from_release, to_release, strategy, state, reason, started_at,"
                        " finished_at, phase, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rollouts)
    return f"sqlite:///{db}"


class Kiln:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**{k: v for k, v in os.environ.items() if k not in ("KILN_LEDGER_URL", "KILN_FAULT")},
                    "KILN_HOME": str(home), "KILN_EXTRA_LABELS": LABEL,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "kiln", *args], env=self.env, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"kiln {' '.join(args)}: {proc.stderr}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "kiln", *args], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)


def api_latency(url: str, token: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(7)
    out = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        for path in ("status", "releases"):
            for _ in range(20):  # warm-up: thread contexts, engine clients, SQLite pages
                c.get(f"/api/v1/apps/scale/envs/env-{rng.randrange(ENVS):02d}/{path}").raise_for_status()
            times = []
            for _ in range(REQUESTS):
                env = f"env-{rng.randrange(ENVS):02d}"
                began = time.perf_counter()
                r = c.get(f"/api/v1/apps/scale/envs/{env}/{path}")
                times.append(time.perf_counter() - began)
                r.raise_for_status()
            body = r.json()
            out[path] = {**summary_ms(times), "bytes": len(r.content),
                         "items": len(body) if isinstance(body, list) else len(body.get("instances", []))}
            log(f"GET …/{path}: {out[path]}")
    return out


def follow(url: str, token: str, app: str, got: list, ready: threading.Barrier, stop: threading.Event) -> None:
    """One SSE client: every event it receives, with when it arrived."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(10, read=120)) as c, \
            c.stream("GET", f"/api/v1/apps/{app}/events/stream", params={"env": "production", "limit": 0}) as r:
        r.raise_for_status()
        ready.wait()
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append((time.time(), json.loads(line[6:])))
                if got[-1][1]["kind"] in ("rollout.succeeded", "rollout.aborted"):
                    return
            if stop.is_set():
                return


def sse(url: str, token: str, kiln: Kiln, spec: Path, app: str) -> dict:
    kiln.run("deploy", "-f", str(spec))  # v1: the rollout followed below is v1 → v2
    text = (spec.parent / "app.py").read_text()
    (spec.parent / "app.py").write_text(re.sub(r"^MESSAGE = .*$", "MESSAGE = 'alone'", text, flags=re.M))
    began = time.monotonic()
    kiln.run("deploy", "-f", str(spec))
    alone = time.monotonic() - began
    (spec.parent / "app.py").write_text(re.sub(r"^MESSAGE = .*$", "MESSAGE = 'followed'", text, flags=re.M))
    got: list[list] = [[] for _ in range(FOLLOWERS)]
    ready = threading.Barrier(FOLLOWERS + 1)
    stop = threading.Event()
    threads = [threading.Thread(target=follow, args=(url, token, app, got[i], ready, stop), daemon=True)
               for i in range(FOLLOWERS)]
    for t in threads:
        t.start()
    ready.wait(60)
    began = time.monotonic()
    kiln.run("deploy", "-f", str(spec))
    followed = time.monotonic() - began
    for t in threads:
        t.join(60)
    stop.set()
    kinds = [[e["kind"] for _, e in g] for g in got]
    lags = []
    for g in got:
        for arrived, e in g:
            recorded = datetime.fromisoformat(e["at"].rstrip("Z")).replace(tzinfo=UTC).timestamp()
            lags.append(max(0.0, arrived - recorded))
    complete = sum(1 for k in kinds if "rollout.started" in k and "rollout.succeeded" in k)
    out = {"followers": FOLLOWERS, "complete": complete, "events_per_follower": sorted({len(k) for k in kinds}),
           "kinds": kinds[0], "delivery": summary_ms(lags) if lags else {},
           "deploy_seconds_alone": round(alone, 2), "deploy_seconds_followed": round(followed, 2)}
    log(f"SSE: {out}")
    return out


def page_weight(url: str, token: str, app: str) -> dict:
    with httpx.Client(base_url=url, timeout=30) as c:
        c.post("/login", data={"token": token}, headers={"Origin": url})  # the dashboard's session (same origin)
        out = {}
        for name, path in (("overview", "/"), ("environment", f"/apps/{app}/envs/production"),
                           ("live view (every 1 s)", f"/apps/{app}/envs/production/live"),
                           ("events", f"/apps/{app}/events"), ("ci", "/ci"), ("css", "/static/kiln.css"),
                           ("js", "/static/kiln.js")):
            r = c.get(path)
            r.raise_for_status()
            out[name] = len(r.content)
    out["environment page with its css and js"] = out["environment"] + out["css"] + out["js"]
    log(f"page weight: {out}")
    return out


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    a, s, w = result["api"], result.get("sse", {}), result.get("pages", {})
    lines = [f"# kiln serve: control plane benchmark ({result['started']})", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`.", "",
             f"## API latency: {ENVS * PER_ENV:,} releases across {ENVS} environments (one keep-alive client, "
             f"{REQUESTS} requests each, random environments; goal p99 ≤ 50 ms)", "",
             "| endpoint | p50 ms | p95 ms | p99 ms | max ms | answer |", "|---|---|---|---|---|---|"]
    for path in ("status", "releases"):
        x = a[path]
        lines.append(f"| GET /api/v1/apps/scale/envs/ENV/{path} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | "
                     f"{x['max_ms']} | {x['bytes']} bytes, {x['items']} items |")
    if s:
        d = s["delivery"]
        lines += ["", f"## {s['followers']} SSE clients following a rollout (examples/hello, rolling, 2 replicas)", "",
                  f"- clients that got the rollout's start and end: {s['complete']} of {s['followers']}; events each: "
                  f"{s['events_per_follower']} ({', '.join(s['kinds'])})",
                  f"- from the ledger's record of an event to a client having it: p50 {d.get('p50_ms')} ms, p99 "
                  f"{d.get('p99_ms')} ms, max {d.get('max_ms')} ms ({d.get('n')} deliveries; the stream polls the "
                  "ledger every 0.5 s)",
                  f"- `kiln deploy` took {s['deploy_seconds_followed']} s with the 50 followers, "
                  f"{s['deploy_seconds_alone']} s without"]
    if w:
        lines += ["", "## Dashboard page weight (uncompressed bytes)", "",
                  f"The overview lists all {ENVS + 2} environments of the run (the {ENVS} seeded ones and "
                  "examples/hello's production and staging); the environment page is examples/hello's production (its "
                  "charts are inline SVG). No JavaScript library: the page's own script is the `js` row.", "",
                  "| what | bytes |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in w.items()]
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-serve-"))
    home = root / "home"
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    sys.path.insert(0, str(REPO / "src"))
    log(f"seeding {ENVS * PER_ENV} releases in {home}")
    seed(home)
    from kiln.access import new_token
    from kiln.ledger.store import Ledger

    token = new_token()
    Ledger(f"sqlite:///{home / 'ledger.db'}").tokens.create("bench", "viewer", (), token)
    kiln = Kiln(home)
    app = f"bs{os.getpid() % 100000}"
    target = root / app
    shutil.copytree(EXAMPLE, target)
    spec = target / "kiln.yaml"
    spec.write_text(spec.read_text().replace("app: hello", f"app: {app}")
                    .replace("port: 8080", f"port: {free_port()}").replace("port: 8081", f"port: {free_port()}"))
    port = free_port()
    server = kiln.popen("serve", "--port", str(port), "-f", str(spec))
    url = f"http://127.0.0.1:{port}"
    result: dict = {"started": started, "command": "python -m bench.serve",
                    "machine": f"{os.cpu_count()} cores, {os.uname().release}"}
    try:
        for _ in range(150):
            try:
                httpx.get(url + "/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        result["api"] = api_latency(url, token)
        write(result)
        result["sse"] = sse(url, token, kiln, spec, app)
        write(result)
        result["pages"] = page_weight(url, token, app)
        write(result)
    finally:
        server.terminate()
        server.wait(10)
        try:
            kiln.run("destroy", "-e", "production", "-f", str(spec))
        except RuntimeError as exc:
            log(f"cleanup: {exc}")
        subprocess.run(["sh", "-c", f"docker images -q --filter label=kiln.app={app} | xargs -r docker rmi -f"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    log(f"wrote {RESULTS / 'serve.md'}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rewrite serve.md from serve.json
        write(json.loads((RESULTS / "serve.json").read_text()))
        sys.exit(0)
    sys.exit(main())
