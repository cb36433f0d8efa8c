"""The machine's facts printed at the top of every report: CPU, memory, kernel and the versions
of everything measured (kiln's commit, Docker, HAProxy in the router image, compose, wrk)."""

from __future__ import annotations

import os
import platform
import re
import subprocess

from bench.harness import REPO, engine


def _out(*argv: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip()


def _first(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    return match.group(1).strip() if match else text.splitlines()[0] if text else "?"


def provenance() -> dict:
    """The commit measured and whether the tree differed from it (bench/results aside, which the
    run itself writes): a report from a dirty tree says so."""
    commit = _out("git", "-C", str(REPO), "rev-parse", "HEAD")
    status = _out("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    changed = [line.split(maxsplit=1)[1] for line in status.splitlines() if len(line.split(maxsplit=1)) == 2]
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:20]}


def machine(router_image: str | None = None) -> dict[str, str]:
    cpu = _first(r"^Model name:\s*(.*)$", _out("lscpu"))
    mem_kb = int(_first(r"^MemTotal:\s*(\d+)", open("/proc/meminfo").read()))
    ver = engine().version()
    facts = {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _first(r'^PRETTY_NAME="(.*)"', open("/etc/os-release").read()),
        "python": platform.python_version(),
        "kiln commit": (lambda p: p["commit"][:12] + (" (dirty tree)" if p["dirty"] else " (clean tree)"))(provenance()),
        "load average at start (1, 5, 15 min)": " ".join(open("/proc/loadavg").read().split()[:3]),
        "docker engine (and its swarmkit)": f"{ver['Version']} (API {ver['ApiVersion']})",
        "docker client": _first(r"Version:\s*(\S+)", _out("docker", "version", "--format", "Version: {{.Client.Version}}")),
        "docker-compose": _first(r"version ([^,\s]+)", _out("docker-compose", "version")),
        "wrk": _first(r"^wrk (\S+)", _out("wrk", "-v")),
        "haproxy (host)": _first(r"version (\S+)", _out("haproxy", "-v")),
    }
    if router_image:
        text = _out("docker", "run", "--rm", "--entrypoint", "haproxy", router_image, "-v")
        facts["haproxy (kiln's router image)"] = _first(r"version (\S+)", text)
    return facts
