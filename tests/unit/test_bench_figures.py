"""The benchmark's figures in README.md are what bench/readme_table.py makes of the committed
reports (never typed by hand); the open-loop load's accounting and the router-without-retries
variant, as pure code."""

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


def test_the_readme_block_is_generated_from_the_committed_reports():
    text = (REPO / "README.md").read_text()
    assert readme_table.BEGIN in text and readme_table.END in text
    assert readme_table.rewrite(text, readme_table.block()) == text, "run `python -m bench.readme_table`"


def test_the_block_says_which_commit_and_whether_the_tree_was_dirty(tmp_path):
    import json
    (tmp_path / "report.json").write_text(json.dumps({
        "command": "bench/run --quick", "started": "2026-12-03 15:00:00 UTC", "notes": ["The machine was shared."],
        "provenance": {"commit": "0123456789abcdef" * 2, "dirty": True, "changed": ["src/kiln/cli.py"]},
        "noop": {"noop_deploy": [0.4], "cached_bake": [0.35]}}))
    out = readme_table.block(tmp_path)
    assert "commit `0123456789ab`, **dirty tree**. The machine was shared." in out
    assert "| report | no-op kiln deploy <= 0.5 s | 0.40 s | met |" in out
    assert "| report | cached kiln bake <= 0.3 s | 0.35 s | **missed** |" in out


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
