"""The report: targets judged from the measured figures, then every figure, as Markdown, JSON
and PNG plots under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import median

NO_RETRIES = "kiln, router retries off"  # as bench.availability.NO_RETRIES (not imported: report stays light)


def _med(values: list[float]) -> float | None:
    return round(median(values), 3) if values else None


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (tool, scenario): sums over its runs, the longest gap and slowest change."""
    out: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["tool"], row["scenario"])
        if "unavailable" in row:
            out[key] = dict(row)
            continue
        a = out.setdefault(key, {"tool": row["tool"], "scenario": row["scenario"], "runs": 0, "requests": 0,
                                 "non_2xx": 0, "socket_errors": 0, "failed": 0, "seconds": 0.0, "max_gap_ms": 0,
                                 "change_seconds": 0.0, "note": row["note"]})
        a["runs"] += 1
        for k in ("requests", "non_2xx", "socket_errors", "failed", "seconds"):
            a[k] += row[k]
        a["max_gap_ms"] = max(a["max_gap_ms"], row["max_gap_ms"])
        a["change_seconds"] = max(a["change_seconds"], row["change_seconds"])
    for a in out.values():
        if "runs" in a:
            a["rps"] = a["requests"] / a["seconds"] if a["seconds"] else 0.0
    return list(out.values())


def targets(r: dict) -> list[dict]:
    out = []
    kiln = [row for row in r.get("availability", []) if row.get("tool") == "kiln"]
    if kiln:
        total = sum(row["requests"] for row in kiln)
        failed = sum(row["failed"] for row in kiln)
        slowest = min(row["rps"] for row in kiln)
        out.append({"target": "kiln: 0 failed requests in every deploy, rollback and instance-kill scenario",
                     "measured": f"{failed} failed of {total:,} requests in {len(kiln)} runs",
                     "met": failed == 0})
        out.append({"target": "... over >= 20,000 requests at >= 200 requests/s",
                     "measured": f"{total:,} requests; slowest run {slowest:.0f} req/s",
                     "met": total >= 20000 and slowest >= 200})
    for n, d in sorted(r.get("deploy_time", {}).items(), key=lambda kv: int(kv[0])):
        k, f, s = _med(d.get("kiln", {}).get("command", [])), _med(d.get("floor", [])), _med(d.get("swarm", []))
        if k and f:
            out.append({"target": f"kiln deploy time <= 1.5 x floor ({n} replicas)",
                         "measured": f"kiln {k:.2f} s, floor {f:.2f} s: {k / f:.2f} x{_deploy_cause(r, d, k, f)}",
                         "met": k <= 1.5 * f})
        if k and s:
            out.append({"target": f"kiln deploy time below Docker Swarm's ({n} replicas)",
                         "measured": f"kiln {k:.2f} s, Swarm {s:.2f} s: {k / s:.2f} x", "met": k < s})
    opened = [row for row in r.get("open_loop", []) if row.get("tool") == "kiln"]
    if opened:
        sent = sum(row["change"]["sent"] for row in opened)
        failed = sum(row["failed"] for row in opened)
        timeouts = sum(row["change"]["timeouts"] + row["steady"]["timeouts"] for row in opened)
        out.append({"target": "kiln: 0 failed requests under open-loop load (timeouts and hung connections counted)",
                    "measured": f"{failed} failed ({timeouts} timeouts) of {sent:,} requests due during {len(opened)} changes",
                    "met": failed == 0})
    kills = [row for row in opened if row["scenario"] == "docker kill of one instance"]
    if kills:
        worst = max(row["change"]["p99_ms"] or 0.0 for row in kills)
        failed = sum(row["failed"] for row in kills)
        out.append({"target": "kiln: p99 <= 100 ms and 0 failed while the agent replaces a killed instance (open loop)",
                    "measured": f"worst p99 {worst:.1f} ms, {failed} failed in {len(kills)} kills", "met": worst <= 100 and failed == 0})
    noop = r.get("noop")
    if noop:
        d, b = _med(noop["noop_deploy"]), _med(noop["cached_bake"])
        imports, cli = _med(noop.get("import_deploy_path", [])), _med(noop.get("import_kiln_cli", []))
        out.append({"target": "no-op kiln deploy <= 0.5 s", "measured": f"{d:.2f} s" + (
            f"; importing what it imports takes {imports:.2f} s of it (SQLAlchemy, pydantic, the Docker SDK)" if d > 0.5 and imports else ""),
            "met": d <= 0.5})
        out.append({"target": "cached kiln bake <= 0.3 s", "measured": f"{b:.2f} s" + (
            f"; importing kiln.cli alone takes {cli:.2f} s" if b > 0.3 and cli else ""), "met": b <= 0.3})
    for variant, v in r.get("router", {}).get("variants", {}).items():
        for conc, s in v["summary"].items():
            out.append({"target": f"router p99 overhead <= 2 ms over direct ({variant}, {conc[1:]} "
                                  f"connection{'s' if conc != 'c1' else ''})",
                         "measured": f"p99 {s['router']['p99_ms']:.2f} ms via HAProxy vs {s['direct']['p99_ms']:.2f} ms "
                                     f"direct: {s['overhead_p99_ms']:+.2f} ms", "met": s["overhead_p99_ms"] <= 2})
    return out


def _deploy_cause(r: dict, d: dict, command: float, floor: float) -> str:
    """Where a deploy's time beyond the floor went, from this run's own figures: the time outside
    the rollout (of which importing what a deploy imports), and the old set's removal after unrouting."""
    rollout = _med(d.get("kiln", {}).get("rollout", []))
    steps = d.get("kiln", {}).get("milestones") or {}
    imports = _med((r.get("noop") or {}).get("import_deploy_path", []))
    if command <= 1.5 * floor or not rollout:
        return ""
    parts = [f"{command - rollout:.2f} s outside the rollout" + (f" (importing: {imports:.2f} s)" if imports else "")]
    if "Remove" in steps and "Unroute" in steps:
        parts.append(f"removing the old set after unrouting it: {steps['Remove'] - steps['Unroute']:.2f} s")
    return "; " + "; ".join(parts)


def write(r: dict, results: Path, name: str = "report") -> None:
    results.mkdir(parents=True, exist_ok=True)
    r["targets"] = targets(r)
    (results / f"{name}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    try:
        plots = _plots(r, results, name)
    except Exception as exc:  # a plot must never cost the figures
        r.setdefault("errors", {})["plots"] = f"{type(exc).__name__}: {exc}"
        plots = []
    (results / f"{name}.md").write_text(_markdown(r, plots))


def _markdown(r: dict, plots: list[str]) -> str:
    lines = [f"# kiln benchmark report ({r['mode']} run)", "",
             f"Run {r['started']} – {r.get('finished', '(unfinished)')} with `{r['command']}`. "
             "Every figure below was measured in this run, on this machine; the JSON beside this file has every sample.", "",
             _provenance(r), "",
             "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r.get("facts", {}).items()]
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |" for t in r["targets"]]
    for group, msg in r.get("errors", {}).items():
        lines += ["", f"**{group} did not complete:** {msg}"]
    for note in r.get("notes", []):
        lines += ["", note]

    avail = aggregate(r.get("availability", []))
    if avail:
        lines += ["", "## Failed requests during a change (wrk keep-alive load, 16 connections)", "",
                  "| tool | scenario | runs | requests | req/s | non-2xx | socket errors | longest gap without a 2xx | slowest change | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in avail:
            if "unavailable" in row:
                lines.append(f"| {row['tool']} | {row['scenario']} | 0 | – | – | – | – | – | – | not measurable here: {row['unavailable']} |")
                continue
            lines.append(f"| {row['tool']} | {row['scenario']} | {row['runs']} | {row['requests']:,} | {row['rps']:.0f} | "
                         f"{row['non_2xx']} | {row['socket_errors']} | {row['max_gap_ms']} ms | {row['change_seconds']:.2f} s | {row['note']} |")
        lines += ["", "Sums over the runs (the JSON has each run). wrk runs from 1 s before each change until 1 s after "
                  "it, with its default 2 s request timeout (a request unanswered after 2 s is a socket error, "
                  "`timeout`). The longest gap is the longest stretch of wall-clock time (10 ms resolution) in which "
                  "no connection received a 2xx response."]

    lines += _open_table(r.get("open_loop", []))
    if any(row.get("tool") == NO_RETRIES for row in r.get("availability", []) + r.get("open_loop", [])):
        lines += ["", f"*{NO_RETRIES}*: the same kiln, started through bench/kiln_noretries.py, whose router config "
                  "has `retries 0` and neither `option redispatch` nor `retry-on` (kiln's own has `retries 3`, `option "
                  "redispatch 1`, `retry-on conn-failure empty-response response-timeout`): the difference is what "
                  "HAProxy's retries buy kiln."]

    dt = r.get("deploy_time", {})
    if dt:
        lines += ["", "## Deploy time (new image onto N running replicas, image already built)", "",
                  "| replicas | floor | kiln deploy (command) | kiln rollout (its own timer) | Docker Swarm | kiln / floor | kiln / Swarm |",
                  "|---|---|---|---|---|---|---|"]
        for n, d in sorted(dt.items(), key=lambda kv: int(kv[0])):
            k, f, s = _med(d.get("kiln", {}).get("command", [])), _med(d.get("floor", [])), _med(d.get("swarm", []))
            ro = _med(d.get("kiln", {}).get("rollout", []))
            lines.append(f"| {n} | {_s(f)} | {_s(k)} | {_s(ro)} | {_s(s)} | {_x(k, f)} | {_x(k, s)} |")
        lines += ["", "Medians. *floor*: create and start N containers of the same image in parallel through the "
                  "Engine API and see each answer `GET /health` once (polled every 10 ms). *kiln deploy*: the whole "
                  "`kiln deploy` command (Python start, spec, cached bake, release, start N new instances, health "
                  "checks, HAProxy adds and checks them, drain and remove the N old ones). *Swarm*: `docker service "
                  "update --update-order start-first --update-parallelism 0` until every task runs (healthy) on the "
                  "new image and no old task runs; health check every 500 ms as in kiln.yaml."]
        ms = {n: d["kiln"].get("milestones") for n, d in dt.items() if d.get("kiln", {}).get("milestones")}
        if ms:
            kinds = sorted({k for m in ms.values() for k in m}, key=lambda k: max(m.get(k, 0) for m in ms.values()))
            lines += ["", "Where kiln's rollout spends its time (last repeat; seconds from the rollout's start until the "
                      "last step of each kind was done, from `kiln rollout show`):", "",
                      "| replicas | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for n in sorted(ms, key=int):
                lines.append(f"| {n} | " + " | ".join(f"{ms[n].get(k, 0):.2f}" for k in kinds) + " |")
    noop = r.get("noop")
    if noop:
        lines += ["", "## No-op costs", "", "| what | median | samples |", "|---|---|---|"]
        for k, label in (("noop_deploy", "`kiln deploy`, nothing changed"), ("cached_bake", "`kiln bake`, image cached"),
                         ("import_kiln_cli", "`python -c 'import kiln.cli'` (what bounds the bake)"),
                         ("import_deploy_path", "importing all a no-op deploy imports, before any work (what bounds it)"),
                         ("python_start", "`python -c pass`")):
            if k in noop:
                lines.append(f"| {label} | {_s(_med(noop[k]))} | {', '.join(f'{v:.2f}' for v in noop[k])} |")
    router = r.get("router")
    if router:
        lines += ["", "## Router overhead (one instance, wrk for "
                  f"{router['seconds_per_run']:.0f} s a run, direct and via HAProxy alternated)", "",
                  "| app | connections | path | p50 | p99 | req/s |", "|---|---|---|---|---|---|"]
        for variant, v in router["variants"].items():
            for conc, s in v["summary"].items():
                for path in [p for p in ("direct", "router", "published") if p in s]:
                    lines.append(f"| {variant} | {conc[1:]} | {path} | {s[path]['p50_ms']:.2f} ms | {s[path]['p99_ms']:.2f} ms | {s[path]['rps']:.0f} |")
                lines.append(f"| {variant} | {conc[1:]} | **overhead** | {s['overhead_p50_ms']:+.2f} ms | {s['overhead_p99_ms']:+.2f} ms | |")
        lines += ["", "*direct*: wrk to the instance's address on its network; *router*: through kiln's router, HAProxy "
                  "on the host's network listening on 127.0.0.1 (reusing its connections to the instance), so the "
                  "overhead is HAProxy's hop; *published*: to the direct instance through a port Docker publishes "
                  "on 127.0.0.1, i.e. through dockerd's userland proxy (docker-proxy), which the router's own port "
                  "went through until the router moved to the host's network. examples/hello sends each reply in one write; the TCP_NODELAY variant "
                  "(the same app with `disable_nagle_algorithm = True`, built for this measurement only) shows that "
                  "Nagle's algorithm no longer plays a part. At 16 connections wrk, HAProxy and the app share the "
                  "2 cores, which bounds both paths alike."]
    plan = r.get("plan")
    if plan:
        lines += ["", "## Control-plane scale", "",
                  f"- `kiln.rollout.plan.plan` over {plan['instances']:,} serving instances, first step of a rollout: "
                  f"{plan['first_plan_ms']:.2f} ms."]
        for key, label in (("rollout_surge_100pct", "max_surge 100%"), ("rollout_surge_10pct", "max_surge 10%")):
            p = plan[key]
            lines.append(f"- A whole rollout ({label}), planned again after every step: {p['plan_calls']} plans, "
                         f"{p['plan_seconds']:.3f} s of planning in all, slowest plan {p['slowest_plan_ms']:.1f} ms.")
    rel = r.get("releases")
    if rel:
        lines.append(f"- `kiln releases` with {rel['releases']:,} releases and as many rollouts in the ledger: "
                     f"{_s(_med(rel['kiln_releases']))} (table), {_s(_med(rel['kiln_releases_json']))} (`--json`); "
                     f"`kiln lock status` on the same ledger, a one-row query: {_s(_med(rel['kiln_lock_status']))}.")
    for p in plots:
        lines += ["", f"![{p}]({p})"]
    return "\n".join(lines) + "\n"


def _provenance(r: dict) -> str:
    p = r.get("provenance")
    if not p:
        return "Commit and tree state: not recorded (a report from before they were)."
    return (f"Measured at commit `{p['commit'][:12]}`, "
            + (f"**with a dirty tree** (changed: {', '.join(p['changed'])})." if p["dirty"] else "clean tree (no change to tracked files but bench/results).")
            + " Every note below (machine shared or quiet) was written when the run was started.")


def _open_table(rows: list[dict]) -> list[str]:
    """The open-loop table: per (tool, scenario), failures during the change and latency during it
    next to the steady state just before it."""
    if not rows:
        return []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["tool"], row["scenario"]), []).append(row)
    rate, timeout = rows[0]["rate"], rows[0]["timeout_s"]
    lines = ["", f"## Open-loop load: {rate:.0f} requests a second on a fixed schedule, {timeout:g} s client timeout", "",
             "| tool | scenario | runs | requests due during the change | failed | of which timeouts | other failures "
             "| latency during the change p50 / p99 / max | steady state before it p50 / p99 / max |",
             "|---|---|---|---|---|---|---|---|---|"]

    def lat(ws: list[dict]) -> str:
        p50 = [w["p50_ms"] for w in ws if w["p50_ms"] is not None]
        p99 = [w["p99_ms"] for w in ws if w["p99_ms"] is not None]
        mx = [w["max_ms"] for w in ws if w["max_ms"] is not None]
        if not p50:
            return "–"
        return f"{median(p50):.1f} / {max(p99):.1f} / {max(mx):.0f} ms"
    for (tool, scenario), rs in groups.items():
        ch = [r["change"] for r in rs]
        other: dict[str, int] = {}
        for c in ch:
            for k, v in c["failures"].items():
                if k != "timeout":
                    other[k] = other.get(k, 0) + v
        lines.append(f"| {tool} | {scenario} | {len(rs)} | {sum(c['sent'] for c in ch):,} | {sum(c['failed'] for c in ch)} | "
                     f"{sum(c['timeouts'] for c in ch)} | {', '.join(f'{k} {v}' for k, v in other.items()) or '0'} | "
                     f"{lat(ch)} | {lat([r['steady'] for r in rs])} |")
    lines += ["", "bench/openloop.py sends each request when it is due (an idle keep-alive connection, or a new one if "
              "none is idle), whatever became of the earlier ones, and counts its latency from when it was due. A "
              "request not fully answered within the timeout (a hung connection) is a failure, as are a refused, reset "
              "or closed connection (`closed`: the server closed it before answering) and a non-2xx answer; nothing is "
              "retried. The change window runs from the command's start to 1 s after its end; the steady state is the "
              "2 s before it. p50 is the median over the runs, p99 and max the worst run's."]
    return lines


def _s(v: float | None) -> str:
    return f"{v:.2f} s" if v is not None else "–"


def _after_exit(seconds: float) -> str:
    return f"{seconds:.1f} s after the exit" if seconds >= 0 else f"{-seconds:.1f} s before the exit"


def _kinds(errors: dict | None) -> str:
    """wrk's socket errors by kind, when there are any: ' (timeout 9)'."""
    nonzero = {k: v for k, v in (errors or {}).items() if v}
    return f" ({', '.join(f'{k} {v}' for k, v in nonzero.items())})" if nonzero else ""


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f} x" if a and b else "–"


def _plots(r: dict, results: Path, name: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    avail = [row for row in aggregate(r.get("availability", [])) if "unavailable" not in row]
    if avail:
        labels = [f"{row['tool']}\n{row['scenario']}" for row in avail]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * len(avail) + 1)), sharey=True)
        ys = range(len(avail))
        a1.barh(ys, [row["failed"] for row in avail], color=["#2a9d8f" if row["tool"] == "kiln" else "#e76f51" for row in avail])
        a1.set_yticks(list(ys), labels, fontsize=7)
        a1.invert_yaxis()
        a1.set_xscale("symlog")
        for y, row in zip(ys, avail, strict=True):
            a1.text(max(row["failed"], 0.1), y, f" {row['failed']:,} of {row['requests']:,}", va="center", fontsize=7)
        a1.set_xlabel("failed requests (non-2xx + socket errors), log scale")
        a2.barh(ys, [row["max_gap_ms"] for row in avail], color="#264653")
        a2.set_xlabel("longest gap without a 2xx response (ms)")
        fig.suptitle("Failed requests during a change, under wrk load")
        fig.tight_layout()
        fig.savefig(results / f"{name}-availability.png", dpi=80)
        plt.close(fig)
        made.append(f"{name}-availability.png")
    dt = r.get("deploy_time", {})
    if dt:
        ns = sorted(dt, key=int)
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("floor", "floor (parallel docker run + 1 health check)"), ("kiln", "kiln deploy"),
                           ("swarm", "Docker Swarm service update")):
            ys = [_med(dt[n].get("kiln", {}).get("command", []) if key == "kiln" else dt[n].get(key, [])) for n in ns]
            if any(y is not None for y in ys):
                ax.plot([int(n) for n in ns], ys, marker="o", label=label)
        ax.set_xlabel("replicas")
        ax.set_ylabel("seconds (median)")
        ax.set_title("Deploy time: new image onto N replicas")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(results / f"{name}-deploy-time.png", dpi=80)
        plt.close(fig)
        made.append(f"{name}-deploy-time.png")
    return made


# --- the cluster group: bench/results/cluster.{md,json} -------------------------------------------


def cluster_targets(c: dict) -> list[dict]:
    from bench.cluster import CAPACITY_BOUND, REPLICAS, summary

    out = []
    rows = c.get("kiln_rows", [])
    if rows:
        total, failed = sum(r["requests"] for r in rows), sum(r["failed"] for r in rows)
        out.append({"target": "kiln on 3 nodes: 0 failed requests (non-2xx + socket errors) in every deploy, rollback, "
                              "canary, node loss and node return",
                    "measured": f"{failed} failed of {total:,} requests in {len(rows)} runs", "met": failed == 0})
    for n in c.get("node_loss", []):
        out.append({"target": f"node loss {n['run']}: {REPLICAS} instances serving again, none on the stopped node, within "
                              f"{CAPACITY_BOUND:g} s of its dockerd's exit",
                    "measured": f"{_after_exit(n['capacity_from_exit_seconds'])} "
                                f"({n['capacity_from_stop_seconds']:.1f} s after the stop began)",
                    "met": n["capacity_from_exit_seconds"] <= CAPACITY_BOUND})
    for kind, how in (("idle", "no load"), ("loaded", "under the wrk load")):
        s = summary(c).get(kind) or {}
        k, sw, done = s.get("kiln_command"), s.get("swarm_done"), s.get("swarm_completed")
        if k and sw:
            out.append({"target": f"kiln deploy time below Docker Swarm's update (new image, 6 replicas, 3 nodes; {how})",
                        "measured": f"kiln {k['median']:.2f} s, Swarm {sw['median']:.2f} s (new tasks routed, old ones "
                                    f"gone): {k['median'] / sw['median']:.2f} x"
                                    + (f"; until HAProxy routes only the new tasks {s['swarm_routed']['median']:.2f} s: "
                                       f"{k['median'] / s['swarm_routed']['median']:.2f} x" if s.get("swarm_routed") else "")
                                    + (f"; Swarm's update `completed` {done['median']:.2f} s: {k['median'] / done['median']:.2f} x"
                                       if done else ""),
                        "met": k["median"] < sw["median"]})
    deploys = [r for r in rows if r["scenario"].startswith("deploy")]
    swarm = c.get("swarm_rows", [])
    if deploys and swarm:
        kf, sf = sum(r["failed"] for r in deploys), sum(r["failed"] for r in swarm)
        out.append({"target": "kiln's deploy fails no more requests than Swarm + HAProxy's update of the same change",
                    "measured": f"kiln {kf} of {sum(r['requests'] for r in deploys):,} in {len(deploys)} deploys; Swarm "
                                f"{sf} of {sum(r['requests'] for r in swarm):,} in {len(swarm)} updates",
                    "met": kf <= sf})
    return out


def write_cluster(c: dict, results: Path, name: str = "cluster") -> None:
    from bench.cluster import summary

    results.mkdir(parents=True, exist_ok=True)
    c["targets"] = cluster_targets(c)
    c["summary"] = summary(c)
    (results / f"{name}.json").write_text(json.dumps(c, indent=1, default=str) + "\n")
    (results / f"{name}.md").write_text(_cluster_markdown(c))


def _cluster_markdown(c: dict) -> str:
    from bench.cluster import CANARY, HEALTH_CMD, REPLICAS, SWARM, TEMPLATE_SLOTS

    lines = [f"# kiln cluster benchmark report ({c['mode']} run): 3 nodes, {REPLICAS} replicas", "",
             f"Run {c['started']} – {c.get('finished', '(unfinished)')} with `{c['command']}`. Every figure below was "
             "measured in this run, on this machine; the JSON beside this file has every sample.", "",
             "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in c.get("facts", {}).items()]
    cl = c.get("cluster", {})
    if cl:
        lines += ["", "## Cluster (`scripts/cluster.sh up`: one machine, workers in network namespaces)", "",
                  "| node | role | state | engine | address | CPUs it reports |", "|---|---|---|---|---|---|"]
        lines += [f"| {n['hostname']} | {n['role']} | {n['state']} | {n['engine']} | {n['address']} | {n['cpus']:g} |"
                  for n in cl.get("nodes", [])]
        lines += ["", f"Registry https://{cl.get('registry')} (TLS, on the machine); Swarm dispatcher heartbeat "
                  f"{cl.get('dispatcher_heartbeat')}; `up` took {cl.get('up_seconds')} s"
                  + (f", `down` {cl['down_seconds']} s" if "down_seconds" in cl else "")
                  + (f"; after `down` the machine's dockerd is in swarm state `{cl['manager_swarm_state_after']}`"
                     if "manager_swarm_state_after" in cl else "")
                  + ". The three nodes share this machine's 2 cores: every node's tasks, both routers, wrk and "
                  "kiln itself compete for them, and traffic between nodes crosses a Linux bridge, not a network."]
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |" for t in c["targets"]]
    for group, msg in c.get("errors", {}).items():
        lines += ["", f"**{group} did not complete:** {msg}"]
    for note in c.get("notes", []):
        lines += ["", note]

    rows = c.get("kiln_rows", []) + c.get("swarm_rows", [])
    if rows:
        lines += ["", "## Failed requests during a change on the cluster (wrk keep-alive load, 16 connections)", "",
                  "| tool | scenario | requests | req/s | non-2xx | socket errors | longest gap without a 2xx | change took | "
                  "instances per node after | note |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            spread = ", ".join(f"{k} {v}" for k, v in (r.get("spread") or {}).items()) or "–"
            lines.append(f"| {r['tool']} | {r['scenario']} | {r['requests']:,} | {r['rps']:.0f} | {r['non_2xx']} | "
                         f"{r['socket_errors']}{_kinds(r.get('errors'))} | {r['max_gap_ms']} ms | {r['change_seconds']:.2f} s | "
                         f"{spread} | {r['note']} |")
        lines += ["", "Each run separately. wrk (2 threads, 16 keep-alive connections, `bench/wrk_report.lua`, its default "
                  "2 s request timeout: an unanswered request is a socket error, `timeout`) runs from 1 s before each "
                  "change until 1 s after it (3 s after a node's return). *change took*: the `kiln` command; for a "
                  "node loss, from the start of `scripts/cluster.sh node-stop` until full capacity; for a node's "
                  "return, until the manager lists it Ready; for Swarm, from `docker service update` until HAProxy "
                  "routes to exactly the 6 new tasks and no old task runs. The longest gap is the longest stretch of "
                  "wall-clock time (10 ms resolution) in which no connection received a 2xx response."]
        uneven = [(r["scenario"], r["spread"]) for r in rows if r["tool"] == "kiln" and r.get("spread")
                  and (len(r["spread"]) < 3 or max(r["spread"].values()) - min(r["spread"].values()) > 1)]
        if uneven:
            lines += ["", "Placement: after " + "; ".join(f"{sc} ({', '.join(f'{k} {v}' for k, v in sp.items())})" for sc, sp in uneven)
                      + f", kiln's {REPLICAS} instances were not spread evenly over the 3 nodes. Each instance is a "
                      "service of one task, placed by Swarm on the node running the fewest tasks at the moment it starts; "
                      "with max_surge 100% the old set still runs then, so the new set fills the nodes the old one left "
                      "emptier, and an uneven set begets its mirror image. Swarm's own service of 6 stays 2 per node "
                      "(its spread is per service)."]
        canary = [r for r in rows if r["scenario"].startswith("canary") and r.get("analysis")]
        if canary:
            lines += ["", "Canary (" + " then ".join(f"{s['weight']}% for {s['pause']}" for s in CANARY) + "): kiln said "
                      + "; ".join(f"`{a}`" for r in canary for a in r["analysis"]) + "."]
    nl = c.get("node_loss", [])
    if nl:
        lines += ["", "## Node loss (kiln agent running; `scripts/cluster.sh node-stop` of a worker holding instances)", "",
                  "| run | node stopped | its instances | dockerd exited | manager lists it Down | its instances out of the router "
                  "| full capacity, from the stop | full capacity, from the exit | agent events |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n in nl:
            ev = ", ".join(f"{k} {v}" for k, v in n["events"].items()) or "–"
            lines.append(f"| {n['run']} | {n['victim']} | {n['instances_on_victim']} of {REPLICAS} | {n['dockerd_exit_seconds']:.2f} s | "
                         f"{_s(n['node_down_seconds'])} | {_s(n['victim_out_of_router_seconds'])} | "
                         f"{n['capacity_from_stop_seconds']:.2f} s | {_after_exit(n['capacity_from_exit_seconds'])} | {ev} |")
        lines += ["", "Seconds from the start of `node-stop` (SIGTERM to the node's dockerd, which stops its containers "
                  "before it exits; the script waits for its exit). *Full capacity*: 6 instances healthy in kiln's router "
                  "with weight, their tasks running on Ready nodes, none on the stopped node (HAProxy's admin socket and "
                  "the manager's task list, polled every 0.1 s). The requests, failures and gaps of these runs are in "
                  "the table above."]
        for n in nl:
            if not (n.get("event_log") or n.get("router_trace")):
                continue
            lines += ["", f"Run {n['run']}, seconds from the start of the stop: kiln's events, and each change of the stopped "
                      "node's servers in kiln's router (HAProxy `show stat`: status, sessions now, connection errors, "
                      "response errors, retries, redispatches, server aborts, last check):", "", "```"]
            lines += [f"{t:7.2f}  {kind:<22} {msg}" for t, kind, msg in n.get("event_log", [])]
            lines += [""] + [f"{row[0]:7.2f}  " + " ".join(str(x) for x in row[1:]) for row in n.get("router_trace", [])]
            lines += ["```"]
    summ = c.get("summary") or {}
    if any((summ.get(kind) or {}).get("kiln_command") or (summ.get(kind) or {}).get("swarm_done") for kind in summ):
        lines += ["", "## Deploy time: kiln vs Docker Swarm (new image onto 6 running replicas on 3 nodes)"]
        deploys = [r for r in c.get("kiln_rows", []) if r["scenario"].startswith("deploy")]
        swarm = c.get("swarm_rows", [])

        def av(rs: list[dict]) -> str:
            return (f"{sum(r['failed'] for r in rs)} of {sum(r['requests'] for r in rs):,} | {max(r['max_gap_ms'] for r in rs)} ms"
                    if rs else "– | –")
        for kind, title in (("idle", "without load (as the one-engine report's deploy time)"),
                            ("loaded", "under the wrk load (the runs of the table above)")):
            s = summ.get(kind) or {}
            if not (s.get("kiln_command") or s.get("swarm_done")):
                continue
            loaded_runs = kind == "loaded"
            lines += ["", f"### {title.capitalize()}", "",
                      "| what | runs | median | min | max |" + (" failed requests | longest gap |" if loaded_runs else ""),
                      "|---|---|---|---|---|" + ("---|---|" if loaded_runs else "")]
            for key, label, rs in (("kiln_command", "**kiln**: `kiln deploy`, the whole command (new set routed, old set stopped and removed)", deploys),
                                   ("kiln_rollout", "kiln: its rollout, by its own timer (inside the command)", None),
                                   ("swarm_ready", "Swarm: 6 new tasks running (healthy)", None),
                                   ("swarm_routed", "Swarm: HAProxy routes to exactly the 6 new tasks (DNS)", None),
                                   ("swarm_old_gone", "Swarm: no old task running any more", None),
                                   ("swarm_done", "**Swarm**: new set routed and old set gone (what `kiln deploy` waits for)", swarm),
                                   ("swarm_completed", "Swarm: its update state `completed` (after `--update-monitor`, 5 s by default)", None)):
                v = s.get(key)
                if v:
                    lines.append(f"| {label} | {v['runs']} | {v['median']:.2f} s | {v['min']:.2f} s | {v['max']:.2f} s |"
                                 + ((" " + (av(rs) if rs is not None else "(same runs) | (same runs)") + " |") if loaded_runs else ""))
            ratio = s.get("ratio_kiln_to_swarm")
            if ratio:
                lines += ["", f"**kiln / Swarm**: median {ratio['median']:.2f} x, fastest runs {ratio['min']:.2f} x, slowest "
                          f"runs {ratio['max']:.2f} x"
                          + (f"; against Swarm until HAProxy routes only the new tasks (old ones may still be stopping): "
                             f"median {s['ratio_kiln_to_swarm_routed']:.2f} x" if s.get("ratio_kiln_to_swarm_routed") else "")
                          + (f"; against Swarm's `completed`: median {s['ratio_kiln_to_swarm_completed']:.2f} x"
                             if s.get("ratio_kiln_to_swarm_completed") else "") + "."]
        ms = [(kind, m) for kind in ("idle", "loaded") for m in ((c.get("kiln_times") or {}).get(kind) or {}).get("milestones", [])]
        if ms:
            kinds = sorted({k for _, m in ms for k in m}, key=lambda k: max(m.get(k, 0) for _, m in ms))
            lines += ["", "Where kiln's rollout spends its time (seconds from the rollout's start until the last step of "
                      "each kind was done, from `kiln rollout show`):", "",
                      "| deploy | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for kind, m in ms:
                lines.append(f"| {'no load' if kind == 'idle' else 'under load'} | " + " | ".join(f"{m.get(k, 0):.2f}" for k in kinds) + " |")
        lines += ["", "Both from an image already baked and pushed to the registry and pulled by no node yet (each run "
                  "pulls its new image on the nodes). **kiln**: rolling, max_surge 100% (start the 6 new tasks, "
                  "check each, add each to HAProxy and wait for its check, then drain and remove the 6 old ones); the "
                  "command includes starting Python, the cached bake, the push (the layers are there: only the "
                  "manifest) and the ledger. **Swarm**: the service was created with `--replicas 6 --endpoint-mode "
                  "dnsrr --update-order start-first --update-parallelism 6 --update-delay 0s` and updated with "
                  "`docker service update --detach --no-resolve-image --image REPO@sha256:…`: all 6 tasks replaced at "
                  "once, each new one started before its old one is stopped, which is the fastest update Swarm offers "
                  "that never has fewer than 6 tasks running (stop-first, or a smaller parallelism, is slower or "
                  "drops capacity). Its tasks have what kiln's have: user 65534, read-only root, tmpfs /tmp, every "
                  "capability dropped, init, the same memory and CPU limits, stop grace period 10 s, and a health "
                  f"check with python3 from the image, `{HEALTH_CMD}`, every 500 ms (timeout 2 s as kiln's, 3 retries, "
                  "Docker's default), so Swarm too waits for health before it stops an old task (a task is `running` "
                  "only once healthy). Polled every 50 ms (task list, service state, HAProxy's admin socket)."]
    cfg = c.get("swarm_haproxy_cfg")
    if cfg:
        lines += ["", "Swarm is fronted by HAProxy in kiln's router image, started as kiln starts its router (a plain "
                  "container on the manager attached to the service's overlay, the same limits and hardening), with "
                  "the configuration kiln's router runs (rendered by `kiln.router.config.render_config`"
                  + (", identical to the file kiln's router ran" if c.get("swarm_haproxy_cfg_extends_kilns") else "")
                  + "), to which only the server-template and the resolvers section are added: servers come from "
                  f"Docker's embedded DNS (`tasks.{SWARM}`), re-resolved every second, in {TEMPLATE_SLOTS} slots (a "
                  "start-first update of 6 has 12 tasks in DNS at once; with 10 slots, in a trial run, two new tasks "
                  "waited ~10 s for a slot), with the check interval, fall/rise and idle-connection pool kiln gives "
                  "the servers it adds:", "", "```", cfg.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"
