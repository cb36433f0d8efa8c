"""How long changes take: deploy time for N replicas (kiln, Swarm, the floor), the cost of a
deploy or bake that has nothing to do, and the router's latency overhead."""

from __future__ import annotations

import re
import time
from datetime import datetime

from bench.harness import LABEL, BenchApp, Wrk, engine, free_port, log, median, sh
from bench.peers import COMMAND, USER, Swarm, bench_network, floor

V1, V2 = "kiln-bench/hello:v1", "kiln-bench/hello:v2"


def kiln_deploy_times(app: BenchApp, replicas: int, repeats: int) -> dict:
    """Seconds of `kiln deploy` (the whole command) replacing `replicas` running instances with a
    new release whose image is already baked, as the other tools get a built image."""
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    app.set_replicas(replicas)
    app.set_message(f"deploy-time base {replicas}")
    app.kiln("deploy")
    command, rollout = [], []
    for i in range(repeats):
        app.set_message(f"deploy-time {replicas} #{i}")
        app.image_tag()
        run = app.kiln("deploy")
        command.append(run.seconds)
        said = re.search(r"is serving at \S+ \(([\d.]+)s\)", run.stderr)
        if said:
            rollout.append(float(said.group(1)))
    log(f"kiln deploy x{replicas}: {[round(s, 2) for s in command]}")
    return {"command": command, "rollout": rollout, "milestones": milestones(app.kiln_json("rollout", "show"))}


def milestones(show: dict) -> dict[str, float]:
    """Seconds from the rollout's start until the last step of each kind was done (last repeat)."""
    def at(text: str) -> float:
        return datetime.fromisoformat(text.rstrip("Z")).timestamp()
    t0 = at(show["started_at"])
    out: dict[str, float] = {}
    for step in show["steps"]:
        if step["state"] == "done" and step["action"] != "Phase":
            out[step["action"]] = round(max(out.get(step["action"], 0.0), at(step["at"]) - t0), 2)
    return out


def swarm_deploy_times(swarm: Swarm, replicas: int, repeats: int) -> list[float]:
    name = f"kilnbench-deploy{replicas}"
    swarm.create(name, V1, replicas)
    try:
        times = [swarm.update(name, V2 if i % 2 == 0 else V1, replicas) for i in range(repeats)]
    finally:
        swarm.remove(name)
    log(f"swarm update x{replicas}: {[round(s, 2) for s in times]}")
    return times


def floor_times(replicas: int, repeats: int) -> list[float]:
    net = bench_network()
    times = [floor(V2, replicas, net) for _ in range(repeats)]
    log(f"floor x{replicas}: {[round(s, 2) for s in times]}")
    return times


def noop_costs(app: BenchApp, repeats: int) -> dict:
    """`kiln deploy` with nothing to do and `kiln bake` of a cached image, on a converged app;
    and, to show what bounds them, the time to start Python, to import kiln's CLI, and to import
    everything a no-op deploy imports (the CLI, the deploy use case with the ledger's SQLAlchemy,
    the Docker provider with the Docker SDK) before it does any work."""
    app.kiln("deploy")
    deploy = [app.kiln("deploy").seconds for _ in range(repeats)]
    bake = [app.kiln("bake").seconds for _ in range(repeats)]
    python = app.python()
    env = app.env()

    def seconds(code: str) -> list[float]:
        out = []
        for _ in range(repeats):
            began = time.monotonic()
            sh(python, "-c", code, env=env)
            out.append(time.monotonic() - began)
        return out
    out = {"noop_deploy": deploy, "cached_bake": bake, "import_kiln_cli": seconds("import kiln.cli"),
           "import_deploy_path": seconds("import kiln.cli, kiln.usecases.deploy, kiln.providers.docker"),
           "python_start": seconds("pass")}
    log("no-op: " + ", ".join(f"{k} {median(v):.3f}s" for k, v in out.items()))
    return out


NODELAY = ("class Handler(BaseHTTPRequestHandler):\n",
           "class Handler(BaseHTTPRequestHandler):\n    disable_nagle_algorithm = True  # bench variant: TCP_NODELAY\n")


def router_overhead(app: BenchApp, seconds: float, rounds: int) -> dict:
    """wrk straight to one instance at its address, through kiln's router (HAProxy on the host's
    network) to one instance of the same image, and to the first instance through a port Docker
    publishes on 127.0.0.1 (its userland proxy, which the router used to sit behind); alternated. Twice:
    examples/hello as it is, whose replies go out in two writes (headers, then body) that Nagle's
    algorithm and delayed ACKs hold ~40 ms on a direct connection, and the same app with
    TCP_NODELAY, which shows HAProxy's own cost."""
    app.set_replicas(1)
    variants = {}
    for variant, nodelay in (("examples/hello as is", False), ("examples/hello with TCP_NODELAY", True)):
        if nodelay:
            app.set_code(*NODELAY)
        try:
            app.set_message(f"router overhead {nodelay}")
            app.kiln("deploy")
            variants[variant] = _overhead(app, app.image_tag(), seconds, rounds)
        finally:
            app.restore_code()
    return {"variants": variants, "seconds_per_run": seconds}


def _overhead(app: BenchApp, image: str, seconds: float, rounds: int) -> dict:
    port = free_port()
    direct = engine().containers.run(image, COMMAND, detach=True, user=USER, init=True, read_only=True,
                                     labels={LABEL[0]: LABEL[1]}, ports={"8000/tcp": ("127.0.0.1", port)},
                                     name=f"kilnbench-direct-{port}", network=bench_network())
    try:
        time.sleep(1.5)
        direct.reload()
        ip = next(n["IPAddress"] for n in direct.attrs["NetworkSettings"]["Networks"].values())
        urls = {"direct": f"http://{ip}:8000/", "router": app.url, "published": f"http://127.0.0.1:{port}/"}
        out: dict[str, dict[str, list]] = {}
        for conns, threads in ((1, 1), (16, 2)):
            for _ in range(rounds):
                for path, url in urls.items():
                    w = Wrk(url, connections=conns, threads=threads)
                    time.sleep(seconds)
                    load = w.stop()
                    if load.failed:
                        raise RuntimeError(f"router overhead run {path} c{conns} had failures: {load}")
                    slot = out.setdefault(f"c{conns}", {}).setdefault(path, [])
                    slot.append({"p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "rps": load.rps,
                                 "requests": load.requests})
        summary = {}
        for conc, paths in out.items():
            summary[conc] = {p: {k: median([r[k] for r in runs]) for k in ("p50_ms", "p99_ms", "rps")}
                             for p, runs in paths.items()}
            s = summary[conc]
            s["overhead_p50_ms"] = round(s["router"]["p50_ms"] - s["direct"]["p50_ms"], 3)
            s["overhead_p99_ms"] = round(s["router"]["p99_ms"] - s["direct"]["p99_ms"], 3)
            log(f"router {conc}: direct {s['direct']}, router {s['router']}")
        return {"runs": out, "summary": summary}
    finally:
        direct.remove(force=True)
