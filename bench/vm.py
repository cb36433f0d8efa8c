"""VMs next to containers, on one app (examples/hello, 2 replicas): bake time (cold, a new release,
cached), the time from `kiln deploy` to serving, a redeploy under wrk load (failed requests, latency,
longest gap), and memory per instance. Writes bench/results/vm.{md,json}.

    bench/vm [--cold] [--out DIR]

--cold first removes the VM base and launcher images (two debootstraps: minutes), so the first
bake is measured from nothing but Debian's archive; without it the bases are reused if present."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench import facts
from bench.harness import BenchApp, engine, free_port, heavy, log, remove_labelled, under_load

RESULTS = Path(__file__).resolve().parent / "results"
VM_ENV, CONTAINER_ENV = "vmtest", "production"


def _remove_vm_bases() -> None:
    from kiln.bake.inputs import base_inputs_hash
    from kiln.bake.vm_recipe import LAUNCHER_BASE, vm_base
    from kiln.spec.loader import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "hello" / "kiln.yaml").spec
    client = engine()
    for base in (vm_base(spec.build.base), LAUNCHER_BASE):
        for image in client.images.list(filters={"label": f"kiln.base.inputs={base_inputs_hash(base)}"}):
            client.images.remove(image.id, force=True)


def _memory(app: BenchApp, env: str) -> list[int]:
    """Memory each running instance of `env` uses, as its cgroup counts it (bytes)."""
    out = []
    for c in engine().containers.list(filters={"label": [f"kiln.app={app.name}", f"kiln.env={env}", "kiln.role=instance"]}):
        stats = c.stats(stream=False)
        usage = stats["memory_stats"].get("usage", 0) - stats["memory_stats"].get("stats", {}).get("inactive_file", 0)
        out.append(usage)
    return out


def run(cold: bool) -> dict:
    r: dict = {"machine": facts.machine(), "cold": cold, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-vm-") as tmp:
        app = BenchApp.make(Path(tmp), "benchvm", replicas=2)
        vm_port = free_port()
        app.edit_spec(lambda data: data["environments"][VM_ENV].update({"port": vm_port}))
        vm_url = f"http://127.0.0.1:{vm_port}/"
        try:
            with heavy("vm: bake"):
                if cold:
                    log("removing the VM base and launcher images (a cold bake follows)")
                    _remove_vm_bases()
                first = app.kiln("bake", "--vm", "--json", timeout=1800)
                r["bake_vm_first_s"] = round(first.seconds, 1)
                r["bake_vm_cached_s"] = round(app.kiln("bake", "--vm", "--json").seconds, 2)
                app.kiln("bake", "--json")  # the container image of these files, so that the next one is cached
                r["bake_container_cached_s"] = round(app.kiln("bake", "--json").seconds, 2)
                app.set_message("bench vm second")
                r["bake_vm_new_release_s"] = round(app.kiln("bake", "--vm", "--json", timeout=900).seconds, 1)
                r["bake_container_new_release_s"] = round(app.kiln("bake", "--json").seconds, 1)
                disk = json.loads(app.kiln("bake", "--vm", "--json").stdout)["disk"]
                r["vm_disk_mib"] = Path(disk).stat().st_size // 1024**2
            for env, url, key in ((CONTAINER_ENV, app.url, "container"), (VM_ENV, vm_url, "vm")):
                with heavy(f"vm: {key} deploy and redeploy"):
                    r[f"{key}_first_deploy_s"] = round(app.kiln("deploy", "-e", env, timeout=900).seconds, 1)
                    time.sleep(5)  # the new instances settle before their memory is read
                    mem = _memory(app, env)
                    r[f"{key}_memory_mib"] = [round(m / 1024**2) for m in mem]
                    app.set_message(f"bench {key} redeploy")
                    app.kiln(*(("bake", "--vm") if key == "vm" else ("bake",)), timeout=900)  # the rollout alone is timed
                    load, timed = under_load(url, lambda env=env: app.kiln("deploy", "-e", env, timeout=900),
                                             before=2, after=2, connections=8)
                    r[f"{key}_redeploy"] = {**load.row(), "deploy_s": round(timed.seconds, 1)}
                    log(f"{key} redeploy: {timed.seconds:.1f}s, {load.requests} requests, {load.failed} failed")
        finally:
            remove_labelled()
    r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return r


def markdown(r: dict) -> str:
    vm, ct = r["vm_redeploy"], r["container_redeploy"]
    machine = "; ".join(f"{k}: {v}" for k, v in r["machine"].items())
    return f"""# VMs next to containers (`bench/vm{' --cold' if r['cold'] else ''}`)

{r['started']} – {r['finished']}. {machine}. QEMU under TCG (software emulation: `/dev/kvm` fails
here). examples/hello, 2 replicas, rolling with max_surge 100%; wrk with 8 keep-alive connections
through kiln's HAProxy router; a request that fails or gets no answer counts as failed.

| measure | VM (`engine: qemu`) | container (`engine: docker`) |
|---|---|---|
| bake, first ({'bases from nothing: two debootstraps' if r['cold'] else 'bases cached'}) | {r['bake_vm_first_s']} s | – |
| bake, a new release (one file changed) | {r['bake_vm_new_release_s']} s | {r['bake_container_new_release_s']} s |
| bake, cached (nothing changed) | {r['bake_vm_cached_s']} s | {r['bake_container_cached_s']} s |
| image size | {r['vm_disk_mib']} MiB qcow2 | – |
| first deploy, start to serving (router included) | {r['vm_first_deploy_s']} s | {r['container_first_deploy_s']} s |
| redeploy under load: time | {vm['deploy_s']} s | {ct['deploy_s']} s |
| redeploy under load: requests, failed | {vm['requests']:,}, **{vm['failed']}** | {ct['requests']:,}, **{ct['failed']}** |
| redeploy under load: req/s, p50 / p99, longest gap | {vm['rps']}, {vm['p50_ms']:.1f} / {vm['p99_ms']:.1f} ms, {vm['max_gap_ms']} ms | {ct['rps']}, {ct['p50_ms']:.1f} / {ct['p99_ms']:.1f} ms, {ct['max_gap_ms']} ms |
| memory per instance (cgroup, after start) | {', '.join(f'{m} MiB' for m in r['vm_memory_mib'])} | {', '.join(f'{m} MiB' for m in r['container_memory_mib'])} |

A VM's memory is its QEMU (guest RAM it touched, TCG's translation cache) in its launcher
container; the guest is given the service's `resources.memory` (512M). Throughput through a VM is
bounded by software emulation of the guest's Python on 2 shared cores, not by kiln.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="remove the VM base and launcher images first")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    r = run(args.cold)
    out = Path(args.out)
    (out / "vm.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "vm.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
