"""hello: a tiny HTTP service for kiln's quickstart, tests and benchmarks.

GET /        -> "hello from v<release> (<instance>) message=<MESSAGE>"
GET /health  -> 200 "ok" while serving; 503 once shutting down
SIGTERM      -> stop accepting, finish in-flight requests, exit 0
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = "hello, world"  # change me and run `kiln deploy` again
RELEASE = os.environ.get("KILN_RELEASE", "dev")
INSTANCE = os.environ.get("KILN_INSTANCE", "local")
GREETING = os.environ.get("GREETING", "hello")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real clients and HAProxy use it
    # Buffered: headers and body leave in one write (flushed after each request), so an instance
    # killed mid-request has sent all of a response or nothing, and nothing can be retried elsewhere.
    wbufsize = 64 * 1024

    def do_GET(self):
        if self.path == "/health":
            self._send(503 if self.server.stopping else 200, "ok\n")
        elif self.path == "/json":
            body = {"release": RELEASE, "instance": INSTANCE, "message": MESSAGE, "greeting": GREETING}
            self._send(200, json.dumps(body) + "\n", "application/json")
        else:
            self._send(200, f"{GREETING} from v{RELEASE} ({INSTANCE}) message={MESSAGE}\n")

    def _send(self, status, text, ctype="text/plain"):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default of 5 drops connection bursts
    daemon_threads = False  # in-flight requests finish before exit
    block_on_close = True
    stopping = False


def main():
    server = Server(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler)

    def stop(_signum, _frame):
        server.stopping = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hello v{RELEASE} ({INSTANCE}) listening on :{server.server_port}", flush=True)
    server.serve_forever(poll_interval=0.1)  # SIGTERM to exit within ~0.1 s once in-flight requests end
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
