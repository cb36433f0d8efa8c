"""The benchmark's figures in README.md and bench/results/README.md are what bench/readme_table.py
makes of the committed reports (never typed by hand), each verdict the one its report recorded;
README.md stays a front door (the headline table at most 8 rows); the open-loop load's accounting
and the router-without-retries variant, as pure code."""

from __future__ import annotations

import asyncio
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import openloop, readme_table  # noqa: E402
from bench.kiln_noretries import RETRY_LINES, without_retries  # noqa: E402


def _table_rows(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| claim ")]


def test_the_readme_block_is_generated_from_the_committed_reports():
    text = (REPO / "README.md").read_text()
    assert readme_table.BEGIN in text and readme_table.END in text
    assert readme_table.rewrite(text, readme_table.block()) == text, "run `python -m bench.readme_table`"
    index = (REPO / "bench" / "results" / "README.md").read_text()
    assert readme_table.rewrite(index, readme_table.index_block()) == index, "run `python -m bench.readme_table`"


def test_the_headline_table_has_at_most_8_rows_each_linking_to_an_existing_report():
    import re
    block = readme_table.block()
    rows = _table_rows(block)
    assert 1 <= len(rows) <= 8
    refs = dict(re.findall(r"^\[(\w+)\]: (\S+)$", block, re.M))
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 5, row
        verdict, link = cells[4].split(": ", 1)
        assert verdict in ("met", "**missed**"), row  # the committed reports record every verdict a row rests on
        ref = re.fullmatch(r"\[\w+\.md\]\[(\w+)\]", link).group(1)
        assert (REPO / refs[ref]).is_file(), row
        assert "not in this report" not in row
    for target in re.findall(r"\]\((bench/results/[^)]+)\)", block):
        assert (REPO / target).is_file(), target


def test_every_missed_target_of_the_committed_reports_is_in_the_known_misses():
    block = readme_table.block()
    misses = block.split("**Known misses**:", 1)[1].split("\n\n", 1)[0]
    for name, _ in readme_table.REPORTS:
        ts, _src = readme_table.recorded(readme_table.RESULTS, name)
        if any(not t["met"] for t in ts or []):
            assert f"(bench/results/{name}.md)" in misses, name


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 250
    assert max(len(line) for line in lines) <= 300
    text = "\n".join(lines)
    assert text.index("scripts/quickstart.sh") < text.index("bench:begin") < text.index("## What it does")


def _report(tmp_path, recorded_met: bool) -> None:
    import json
    (tmp_path / "report.json").write_text(json.dumps({
        "command": "bench/run --quick", "started": "2026-12-03 15:00:00 UTC", "notes": ["The machine was shared."],
        "provenance": {"commit": "0123456789abcdef" * 2, "dirty": True, "changed": ["src/kiln/cli.py"]},
        "deploy_time": {"1": {"kiln": {"command": [1.0]}, "floor": [0.5], "swarm": [2.0]}},
        "targets": [{"target": "kiln deploy time below Docker Swarm's (1 replicas)", "measured": "kiln 1.00 s, Swarm 2.00 s",
                     "met": recorded_met},
                    {"target": "no-op kiln deploy <= 0.5 s", "measured": "0.40 s", "met": True}]}))


def test_a_verdict_is_the_one_the_report_recorded_never_judged_again(tmp_path):
    _report(tmp_path, recorded_met=False)  # today's code would call 1.0 s against 2.0 s met; the report said missed
    out = readme_table.block(tmp_path)
    row = next(r for r in _table_rows(out) if r.startswith("| Deploys faster than Docker Swarm |"))
    assert "| 1.00 s | Docker Swarm: 2.00 s |" in row and row.endswith("| **missed**: [report.md][report] |")
    assert "[kiln deploy time below Docker Swarm's (1 replicas): kiln 1.00 s, Swarm 2.00 s](bench/results/report.md)" in out
    _report(tmp_path, recorded_met=True)
    assert "| met: [report.md][report] |" in readme_table.block(tmp_path)


def test_a_report_without_recorded_verdicts_is_not_judged(tmp_path):
    import json
    _report(tmp_path, recorded_met=True)
    r = json.loads((tmp_path / "report.json").read_text())
    del r["targets"]
    (tmp_path / "report.json").write_text(json.dumps(r))
    rows = _table_rows(readme_table.block(tmp_path))
    assert rows and all(r.endswith("| not recorded: [report.md][report] |") for r in rows)
    assert "| Deploys faster than Docker Swarm | 1.00 s | Docker Swarm: 2.00 s |" in "\n".join(rows)
    assert "| No failed GET in a deploy, rollback, canary or instance kill | – (not in this report) |" in "\n".join(rows)
    (tmp_path / "report.md").write_text("# r\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n"
                                        "| kiln deploy time below Docker Swarm's (1 replicas) | as written | **missed** |\n")
    assert "| **missed**: [report.md][report] |" in readme_table.block(tmp_path)  # read from its Markdown


def test_the_results_index_says_which_commit_and_whether_the_tree_was_dirty(tmp_path):
    _report(tmp_path, recorded_met=True)
    out = readme_table.index_block(tmp_path)
    assert "`bench/run --quick`, 2026-12-03 15:00:00 UTC, commit `0123456789ab`, **dirty tree**" in out
    assert "\n  - The machine was shared.\n" in out
    assert "| report | no-op kiln deploy <= 0.5 s | 0.40 s | met | `targets` in its JSON |" in out


def test_open_loop_windows_count_timeouts_and_closed_connections_as_failures():
    samples = [[0, 1.0, 200], [10, 3.0, 200], [20, -1, "timeout"], [30, 5.0, 503], [40, -1, "closed"], [2000, 2.0, 200]]
    w = openloop.window(samples, 0, 1000)
    assert (w["sent"], w["ok"], w["failed"], w["timeouts"]) == (5, 2, 3, 1)
    assert w["failures"] == {"timeout": 1, "non_2xx": 1, "closed": 1}
    assert (w["p50_ms"], w["max_ms"]) == (3.0, 5.0)  # answered requests only (the 503 included)
    assert openloop.window(samples, 1000, float("inf"))["sent"] == 1


def test_open_loop_keeps_its_schedule_while_a_server_hangs():
    """Requests go out on time although the server never answers; each one times out."""
    import socket
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(128)

    class Ok(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        async def go(url: str) -> dict:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.5, stop.set)
            return await openloop.run(url, rate=40, timeout=0.3, stop=stop)

        async def both() -> list[dict]:
            return await asyncio.gather(go(f"http://127.0.0.1:{hang.getsockname()[1]}/"),
                                        go(f"http://127.0.0.1:{server.server_address[1]}/"))
        hung, ok = asyncio.run(both())
    finally:
        server.shutdown()
        hang.close()
    assert 18 <= len(hung["samples"]) <= 22 and {s[2] for s in hung["samples"]} == {"timeout"}
    assert 18 <= len(ok["samples"]) <= 22 and {s[2] for s in ok["samples"]} == {200}


def test_the_router_without_retries_differs_only_in_its_retries():
    from kiln.router.config import render_config
    from kiln.spec.loader import load_spec
    from kiln.spec.resolve import resolve

    text = render_config(resolve(load_spec(REPO / "examples" / "hello" / "kiln.yaml").spec, "production"))
    off = without_retries(text)
    assert all(line not in off.splitlines() for line in RETRY_LINES) and "    retries 0" in off.splitlines()
    assert sorted(set(text.splitlines()) - set(off.splitlines())) == sorted(RETRY_LINES)
    assert set(off.splitlines()) - set(text.splitlines()) == {"    retries 0"}


def test_post_counts_tell_duplicates_lost_and_failed_but_executed_apart():
    from collections import Counter

    from bench.behaviour import post_counts
    samples = [[0, 1, 200, "a-0"], [1, 1, 200, "a-1"], [2, 1, 200, "a-2"], [3, -1, "closed", "a-3"], [4, -1, "timeout", "a-4"]]
    c = post_counts(samples, Counter({"a-0": 1, "a-1": 2, "a-3": 1, "b-9": 1}))
    assert (c["sent"], c["ok"], c["failed"]) == (5, 3, 2)
    assert (c["executed_0"], c["executed_1"], c["duplicates"]) == (2, 2, 1)
    assert (c["lost"], c["failed_but_executed"]) == (1, 1)  # a-2 answered 2xx but never ran; a-3 ran, the client saw it fail


def test_open_loop_posts_carry_their_id():
    raw = openloop.request_bytes("127.0.0.1:8080", "/order", "run1-7")
    assert raw.startswith(b"POST /order HTTP/1.1\r\n") and b"\r\nX-Request-Id: run1-7\r\n" in raw and raw.endswith(b"\r\n\r\n")
    assert openloop.request_bytes("h", "/").startswith(b"GET / HTTP/1.1\r\n")
