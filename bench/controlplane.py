"""Control-plane scale: planning a rollout over 1,000 instances (pure code) and `kiln releases`
with 100,000 releases (and as many rollouts) in the ledger."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime

from bench.harness import BenchApp, log, median
from kiln.ledger.store import Ledger
from kiln.rollout.plan import (
    FULL,
    AwaitHealthy,
    Desired,
    Instance,
    Remove,
    Route,
    Start,
    Unroute,
    plan,
)


def _apply(step: list, facts: list[Instance], counter: list[int]) -> list[Instance]:
    """What the executor would leave after running `step`, in the simplest world: every start
    becomes healthy, every route and removal succeeds."""
    by_name = {i.name: i for i in facts}
    for task in step:
        for action in task:
            if isinstance(action, Start):
                counter[0] += 1
                name = f"new-{counter[0]}"
                by_name[name] = Instance(name, action.service, action.release, running=True, ready=False)
            elif isinstance(action, Route):
                by_name[action.name] = replace(by_name[action.name], ready=True, in_router=True, weight=action.weight)
            elif isinstance(action, Unroute):
                by_name[action.name] = replace(by_name[action.name], ready=False, in_router=False, weight=None)
            elif isinstance(action, Remove):
                by_name.pop(action.name, None)
            elif not isinstance(action, AwaitHealthy):
                raise TypeError(action)
    return list(by_name.values())


def plan_scale(instances: int = 1000, repeats: int = 5) -> dict:
    old = [Instance(f"old-{i}", "web", 1, running=True, ready=True, in_router=True, weight=FULL)
           for i in range(instances)]
    out: dict[str, object] = {"instances": instances}
    one = []
    for _ in range(repeats):
        began = time.perf_counter()
        plan(Desired(release=2, replicas={"web": instances}, routed="web"), old)
        one.append(time.perf_counter() - began)
    out["first_plan_ms"] = round(median(one) * 1000, 3)
    # A whole rolling rollout in batches of 10%: plan, apply the first step, plan again, … (as the
    # executor does), until the plan is empty.
    for label, surge in (("surge_100pct", None), ("surge_10pct", instances // 10)):
        desired = Desired(release=2, replicas={"web": instances}, routed="web", surge=surge, unavailable=0)
        facts, counter, times = list(old), [0], []
        while True:
            began = time.perf_counter()
            steps = plan(desired, facts)
            times.append(time.perf_counter() - began)  # the planning alone, not the simulation
            if not steps:
                break
            facts = _apply(steps[0], facts, counter)
        assert len(facts) == instances and all(i.release == 2 and i.ready for i in facts)
        out[f"rollout_{label}"] = {"plan_calls": len(times), "plan_seconds": round(sum(times), 3),
                                   "slowest_plan_ms": round(max(times) * 1000, 1)}
    log(f"plan over {instances} instances: {out}")
    return out


def seed_releases(app: BenchApp, count: int) -> None:
    """Append `count` releases, each with a succeeded rollout, straight into the app's sqlite
    ledger (created and migrated by the ledger store itself)."""
    app.home.mkdir(parents=True, exist_ok=True)
    db = app.home / "ledger.db"
    Ledger(f"sqlite:///{db}")  # creates the schema through the store's own migrations
    name, env = app.name, "production"
    at = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    config = json.dumps({"app": name, "env": env, "services": {"web": {"replicas": 2}}}, sort_keys=True)
    with sqlite3.connect(db) as con:
        con.executemany(
            "INSERT INTO releases (app, env, number, image, image_tag, inputs_hash, config, config_digest,"
            " spec_digest, \"commit\", dirty, note, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ((name, env, n, f"sha256:{n:064x}", f"kiln/{name}:{n:016x}", f"{n:064x}", config, f"{n:064x}",
              f"{n:064x}", None, False, "", at) for n in range(1, count + 1)))
        con.executemany(
            "INSERT INTO rollouts (app, env, from_release, to_release, strategy, state, reason, started_at,"
            " finished_at, phase, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            ((name, env, n - 1 or None, n, "rolling", "succeeded", "", at, at, "", "{}")
             for n in range(1, count + 1)))


def releases_scale(app: BenchApp, count: int, repeats: int = 3) -> dict:
    began = time.monotonic()
    seed_releases(app, count)
    seeded = time.monotonic() - began
    table = [app.kiln("releases").seconds for _ in range(repeats)]
    as_json = [app.kiln("releases", "--json").seconds for _ in range(repeats)]
    listed = len(json.loads(app.kiln("releases", "--json").stdout))
    status = [app.kiln("lock", "status").seconds for _ in range(repeats)]  # a ledger-only command, as a baseline
    out = {"releases": count, "seed_seconds": round(seeded, 1), "kiln_releases": table,
           "kiln_releases_json": as_json, "listed": listed, "kiln_lock_status": status}
    log(f"kiln releases with {count} releases: {median(table):.3f}s (lock status {median(status):.3f}s)")
    return out
