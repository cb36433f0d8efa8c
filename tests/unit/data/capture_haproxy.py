"""How haproxy_show_stat.csv and haproxy_show_servers_conn.txt were captured (not a test; run
by hand, once, on a host with Debian's haproxy 2.6):

    PYTHONPATH=src .venv/bin/python tests/unit/data/capture_haproxy.py

It renders kiln's own router config (router/config.py) for a literal environment, with the
admin socket moved to a temporary directory, runs `haproxy -f` on it, adds servers with kiln's
own runtime commands (add_server, set_weights, drain_server, stop_server) through RuntimeClient,
and sends 20 sequential requests through the frontend to two tiny local HTTP servers: `a`
answers 200 after ~20 ms, `b` answers 500 at once (both answer 200 on /health, the check).
Server `c` points at a port where nothing listens (DOWN), `d` is drained, `e` is in
maintenance. It stores the reply of `show stat`, then sends one more request
that takes 2 s and, while it is in flight, stores the reply of `show servers conn svc-web`;
both as RuntimeClient.ask returns them (stripped), plus a final newline."""

from __future__ import annotations

import http.client
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kiln.router.config import SOCKET_DIR, render_config
from kiln.router.haproxy_api import (
    RuntimeClient,
    add_server,
    drain_server,
    set_weights,
    stop_server,
)
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

HERE = Path(__file__).parent
PORT = 18991
SPEC = f"""\
app: golden
build: {{steps: ["COPY . /app"]}}
services:
  web:
    port: 8000
    healthcheck: {{http: /health}}
environments:
  capture: {{port: {PORT}}}
"""


def server(status: int, delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            ok = self.path == "/health"
            if not ok:
                time.sleep(2.0 if self.path == "/slow" else delay)
            body = b"ok\n" if ok or status == 200 else b"boom\n"
            self.send_response(200 if ok else status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.handle_error = lambda *_: None  # HAProxy's checks close before reading the body
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def get(path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    conn.request("GET", path)
    conn.getresponse().read()
    conn.close()


def main() -> None:
    a, b = server(200, 0.02), server(500, 0.0)
    with tempfile.TemporaryDirectory(prefix="golden-haproxy-") as tmp:
        cfg_text = render_config(resolve(parse_spec(SPEC), "capture")).replace(SOCKET_DIR, tmp)
        (Path(tmp) / "haproxy.cfg").write_text(cfg_text)
        proc = subprocess.Popen(["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"])
        try:
            client = RuntimeClient(Path(tmp) / "admin.sock", timeout=2)
            end = time.monotonic() + 10
            while not (Path(tmp) / "admin.sock").exists() and time.monotonic() < end:
                time.sleep(0.05)
            client.run(add_server("svc-web", "a", "127.0.0.1", a.server_address[1], 100))
            client.run(add_server("svc-web", "b", "127.0.0.1", b.server_address[1], 100))
            client.run(add_server("svc-web", "c", "127.0.0.1", 1, 100))  # nothing listens: DOWN
            client.run(add_server("svc-web", "d", "127.0.0.1", a.server_address[1], 100))
            client.run(add_server("svc-web", "e", "127.0.0.1", a.server_address[1], 100))
            time.sleep(1.0)  # every check has run
            client.run(drain_server("svc-web", "d") + stop_server("svc-web", "e"))
            client.run_at_once(set_weights("svc-web", {"a": 100, "b": 100, "c": 100}))
            for _ in range(20):
                get("/")
            (HERE / "haproxy_show_stat.csv").write_text(client.ask("show stat") + "\n")
            slow = threading.Thread(target=get, args=("/slow",))  # one request in flight (2 s)
            slow.start()
            time.sleep(0.5)
            (HERE / "haproxy_show_servers_conn.txt").write_text(client.ask("show servers conn svc-web") + "\n")
            slow.join()
        finally:
            proc.terminate()
            proc.wait()
            a.shutdown()
            b.shutdown()


if __name__ == "__main__":
    main()
