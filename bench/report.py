"""The report: targets judged from the measured figures, then every figure, as Markdown, JSON
and PNG plots under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import median


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
                         "measured": f"kiln {k:.2f} s, floor {f:.2f} s: {k / f:.2f} x", "met": k <= 1.5 * f})
        if k and s:
            out.append({"target": f"kiln deploy time below Docker Swarm's ({n} replicas)",
                         "measured": f"kiln {k:.2f} s, Swarm {s:.2f} s: {k / s:.2f} x", "met": k < s})
    noop = r.get("noop")
    if noop:
        d, b = _med(noop["noop_deploy"]), _med(noop["cached_bake"])
        out.append({"target": "no-op kiln deploy <= 1 s", "measured": f"{d:.2f} s", "met": d <= 1})
        out.append({"target": "cached kiln bake <= 0.5 s", "measured": f"{b:.2f} s", "met": b <= 0.5})
    for variant, v in r.get("router", {}).get("variants", {}).items():
        for conc, s in v["summary"].items():
            out.append({"target": f"router p99 overhead <= 2 ms over direct ({variant}, {conc[1:]} "
                                  f"connection{'s' if conc != 'c1' else ''})",
                         "measured": f"p99 {s['router']['p99_ms']:.2f} ms via HAProxy vs {s['direct']['p99_ms']:.2f} ms "
                                     f"direct: {s['overhead_p99_ms']:+.2f} ms", "met": s["overhead_p99_ms"] <= 2})
    return out


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
                         ("import_kiln_cli", "`python -c 'import kiln.cli'` (what bounds both)"),
                         ("python_start", "`python -c pass`")):
            lines.append(f"| {label} | {_s(_med(noop[k]))} | {', '.join(f'{v:.2f}' for v in noop[k])} |")
    router = r.get("router")
    if router:
        lines += ["", "## Router overhead (one instance, wrk for "
                  f"{router['seconds_per_run']:.0f} s a run, direct and via HAProxy alternated)", "",
                  "| app | connections | path | p50 | p99 | req/s |", "|---|---|---|---|---|---|"]
        for variant, v in router["variants"].items():
            for conc, s in v["summary"].items():
                for path in ("direct", "router"):
                    lines.append(f"| {variant} | {conc[1:]} | {path} | {s[path]['p50_ms']:.2f} ms | {s[path]['p99_ms']:.2f} ms | {s[path]['rps']:.0f} |")
                lines.append(f"| {variant} | {conc[1:]} | **overhead** | {s['overhead_p50_ms']:+.2f} ms | {s['overhead_p99_ms']:+.2f} ms | |")
        lines += ["", "Both paths enter through a port Docker publishes on 127.0.0.1, so the difference is HAProxy's "
                  "hop (router container → instance on the environment's network), with HAProxy reusing its "
                  "connections to the instance. examples/hello sends each reply in one write; the TCP_NODELAY variant "
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


def _s(v: float | None) -> str:
    return f"{v:.2f} s" if v is not None else "–"


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
