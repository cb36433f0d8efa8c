"""`bench/run [--quick]`: every benchmark, one after the other, each holding the heavy-work lock
for itself only; the report is rewritten after each so a failure still leaves what was measured.
Everything created carries kiln.test=bench and is removed at the end, also on failure."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import availability, cluster, controlplane, facts, report, timing
from bench.harness import RESULTS, BenchApp, guarded, heavy, log, remove_images, remove_labelled, sh
from bench.peers import Swarm

V1, V2 = availability.V1, availability.V2
LOCAL_GROUPS = ("kiln", "compose", "swarm", "openloop", "noretries", "deploy", "noop", "router", "scale")  # one engine: report.{md,json}
OPT_IN = ("cluster", "soak")  # run only when named: a 3-node Swarm (scripts/cluster.sh); a 30-min soak + 1,000 deploys
# Groups with a report of their own (bench/NAME.py writes NAME.{md,json}): behaviour and longlived by
# default, soak only when named.
OWN_REPORTS = ("behaviour", "longlived", "soak")

PROFILES = {
    "quick": {"rounds": 1, "peer_rounds": 1, "repeats": 1, "noop_repeats": 3, "router_seconds": 5,
              "router_rounds": 1, "replicas": (1, 4, 8)},
    "full": {"rounds": 3, "peer_rounds": 3, "repeats": 3, "noop_repeats": 5, "router_seconds": 8,
             "router_rounds": 2, "replicas": (1, 4, 8)},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one repeat of each, short loads (a few minutes)")
    ap.add_argument("--only", default="", help="comma-separated groups: kiln,compose,swarm,openloop,noretries,deploy,noop,router,scale, "
                                                 "behaviour,longlived (all by default), and cluster (a 3-node Swarm) and soak "
                                                 "(30 min, then 1,000 deploys) only when named")
    ap.add_argument("--out", default=str(RESULTS), help="directory for report.{md,json} and plots (cluster.{md,json} "
                                                          "for the cluster group)")
    ap.add_argument("--note", action="append", default=[], help="a sentence for the report, e.g. that the machine "
                                                                   "was shared with other work (repeatable)")
    ap.add_argument("--merge", action="store_true", help="with --only: measure those groups again into the existing "
                                                          "report.json, keeping the other groups' figures (the report says so)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    p = PROFILES[mode]
    only = set(filter(None, args.only.split(",")))
    unknown = only - set(LOCAL_GROUPS) - set(OPT_IN) - set(OWN_REPORTS)
    if unknown:
        ap.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    local = not only or bool(only & set(LOCAL_GROUPS))  # the one-engine report is written only if one of its groups runs
    out = Path(args.out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below

    r: dict = {"mode": mode, "command": "bench/run" + (" --quick" if args.quick else "") + (f" --only {args.only}" if only else ""),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "errors": {}, "notes": list(args.note),
               "provenance": facts.provenance()}
    c: dict = {"mode": mode, "command": r["command"], "started": r["started"], "errors": {}, "notes": list(args.note),
               "provenance": r["provenance"]}
    if args.merge and only & set(LOCAL_GROUPS) and (out / "report.json").exists():
        r = _merged(json.loads((out / "report.json").read_text()), r, sorted(only & set(LOCAL_GROUPS)))
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    swarm = Swarm()

    def group(name: str, fn: Callable[[], None]) -> None:
        if (name not in only) if only else (name in OPT_IN):
            return
        into = c if name in OPT_IN else r
        guarded(into["errors"], name, fn)
        if into is c:
            report.write_cluster(c, out)
        else:
            report.write(r, out)

    apps = {k: BenchApp.make(root, f"kb{k}") for k in ("avail", "deploy", "router", "scale")}
    apps["noretry"] = BenchApp.make(root, "kbnoretry", entry="bench.kiln_noretries")
    try:
        if local:
            setup(apps, r)

        def kiln_group() -> None:
            r["availability"] = [row for row in r.get("availability", []) if row["tool"] != "kiln"]
            for i in range(p["rounds"]):
                with heavy(f"kiln changes under load, round {i + 1}/{p['rounds']}"):
                    r["availability"] += availability.kiln_scenarios(apps["avail"], i + 1)
                report.write(r, out)
        group("kiln", kiln_group)

        def compose_group() -> None:
            with heavy("docker-compose up -d under load"):
                r.setdefault("availability", []).extend(availability.compose_scenario(root, p["peer_rounds"]))
        group("compose", compose_group)

        def swarm_group() -> None:
            # The machine's one dockerd becomes a swarm manager for a while: no test cluster meanwhile.
            with heavy("Docker Swarm: service update under load, deploy times"), cluster.session_lock():
                try:
                    swarm.init()
                    r.setdefault("availability", []).extend(availability.swarm_scenario(swarm, p["peer_rounds"]))
                    router = next(x for x in apps["avail"].containers() if x.labels.get("kiln.role") == "router")
                    for kind in ("wrk", "open"):
                        rows = availability.swarm_dnsrr_scenario(root, p["peer_rounds"], router.image.id,
                                                                 apps["avail"].spec, load=kind)
                        r.setdefault("availability" if kind == "wrk" else "open_loop", []).extend(rows)
                    for n in p["replicas"]:
                        r.setdefault("deploy_time", {}).setdefault(str(n), {})["swarm"] = \
                            timing.swarm_deploy_times(swarm, n, p["repeats"])
                finally:
                    remove_labelled()
                    swarm.leave()
        group("swarm", swarm_group)

        def openloop_group() -> None:
            r["open_loop"] = [row for row in r.get("open_loop", []) if row["tool"] not in ("kiln", "docker-compose")]
            # The swarm group's cleanup removes every bench container, this app's router and instances
            # too: serving again before anything is measured (a run at 076102b measured that first deploy).
            apps["avail"].kiln("deploy")
            for i in range(p["rounds"]):
                with heavy(f"kiln changes under open-loop load, round {i + 1}/{p['rounds']}"):
                    r["open_loop"] += availability.kiln_scenarios(apps["avail"], i + 1, load="open")
                report.write(r, out)
            with heavy("docker-compose up -d under open-loop load"):
                r["open_loop"] += availability.compose_scenario(root, p["peer_rounds"], load="open")
        group("openloop", openloop_group)

        def noretries_group() -> None:
            app, tool = apps["noretry"], availability.NO_RETRIES
            r["availability"] = [row for row in r.get("availability", []) if row["tool"] != tool]
            r["open_loop"] = [row for row in r.get("open_loop", []) if row["tool"] != tool]
            with heavy("kiln with its router retries off: first deploy"):
                app.kiln("deploy")
            for i in range(p["rounds"]):
                with heavy(f"kiln, router retries off, under wrk, round {i + 1}/{p['rounds']}"):
                    r["availability"] += availability.kiln_scenarios(app, i + 1, load="wrk", tool=tool)
                with heavy(f"kiln, router retries off, under open-loop load, round {i + 1}/{p['rounds']}"):
                    r["open_loop"] += availability.kiln_scenarios(app, i + 1, load="open", tool=tool)
                report.write(r, out)
            with heavy("kiln with its router retries off: destroy"):
                app.kiln("destroy", "--env", "production")
        group("noretries", noretries_group)

        def deploy_group() -> None:
            for n in p["replicas"]:
                with heavy(f"deploy time, {n} replicas: floor and kiln"):
                    d = r.setdefault("deploy_time", {}).setdefault(str(n), {})
                    d["floor"] = timing.floor_times(n, p["repeats"])
                    d["kiln"] = timing.kiln_deploy_times(apps["deploy"], n, p["repeats"])
            apps["deploy"].kiln("destroy", "--env", "production")
        group("deploy", deploy_group)

        def noop_group() -> None:
            with heavy("no-op deploy and cached bake"):
                r["noop"] = timing.noop_costs(apps["avail"], p["noop_repeats"])
        group("noop", noop_group)

        def router_group() -> None:
            with heavy("router overhead"):
                r["router"] = timing.router_overhead(apps["router"], p["router_seconds"], p["router_rounds"])
        group("router", router_group)

        def scale_group() -> None:
            with heavy("control-plane scale"):
                r["plan"] = controlplane.plan_scale(1000)
                r["releases"] = controlplane.releases_scale(apps["scale"], 100_000)
        group("scale", scale_group)

        def cluster_group() -> None:
            # Both locks for the whole group, heavy first (a test session under `flock /tmp/kiln-heavy.lock`
            # takes them in this order too); the cluster is up only while they are held.
            with heavy("cluster: 3-node Swarm, kiln vs Swarm's own update", wait=1800), cluster.session_lock() as waited:
                c["cluster_lock_waited_seconds"] = round(waited, 1)
                cluster.run(mode, root, c, lambda: report.write_cluster(c, out), facts.machine)
        group("cluster", cluster_group)
        for name in OWN_REPORTS:
            if (name in only) if only else (name not in OPT_IN):
                _own_report(name, args.quick, out, args.note, r)
    finally:
        with heavy("cleanup"):
            swarm.leave()
            remove_labelled()
            remove_images([f"kiln/{a.name}" for a in apps.values()], [V1, V2])
        r["finished"] = c["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        if local:
            report.write(r, out)
            log(f"report: {out / 'report.md'}")
        if "cluster" in only:
            report.write_cluster(c, out)
            log(f"cluster report: {out / 'cluster.md'}")
        if out.resolve() == RESULTS.resolve():
            from bench import readme_table
            readme_table.main([])
            log("README.md's benchmark figures rewritten from bench/results (bench/readme_table.py)")
    return 1 if r["errors"] or c["errors"] else 0


def _merged(first: dict, again: dict, groups: list[str]) -> dict:
    """The first run's report, to have `groups` measured again: its command, time and provenance
    stay, and a note names what was measured again, when and at which commit."""
    p = again["provenance"]
    note = (f"Group(s) {', '.join(groups)} measured again by `{again['command']} --merge` from {again['started']}, "
            f"commit `{p['commit'][:12]}`" + (" (dirty tree)" if p["dirty"] else " (clean tree)") +
            "; their rows replace this run's.")
    first.pop("targets", None)
    return {**first, "errors": {k: v for k, v in first.get("errors", {}).items() if k not in groups},
            "notes": [*first.get("notes", []), *again["notes"], note]}


def _own_report(name: str, quick: bool, out: Path, notes: list[str], r: dict) -> None:
    """bench/NAME.py, which writes NAME.{md,json} itself (soak always into bench/results)."""
    import importlib

    argv = [*(["--quick"] if quick else []), *(a for n in notes for a in ("--note", n))]
    if name != "soak":
        argv += ["--out", str(out)]
    log(f"{name}: python -m bench.{name} {' '.join(argv)}")
    # Its report says what it measured; this one, that it failed.
    code = guarded(r["errors"], name, lambda: importlib.import_module(f"bench.{name}").main(argv))
    if code:
        r["errors"][name] = f"bench.{name} exited {code}"


def setup(apps: dict[str, BenchApp], r: dict) -> None:
    with heavy("setup: bases, images for the peers, machine facts"):
        a = apps["avail"]
        a.kiln("base", "build")
        a.set_message("peer one")
        sh("docker", "tag", a.image_tag(), V1)
        a.set_message("peer two")
        sh("docker", "tag", a.image_tag(), V2)
        a.kiln("deploy")
        router = next(c for c in a.containers() if c.labels.get("kiln.role") == "router")
        r["facts"] = facts.machine(router.image.tags[0] if router.image.tags else router.image.id)


if __name__ == "__main__":
    sys.exit(main())
