"""The test step of the CI integration tests: examples/hello's app answers /health and / .
Runs inside the baked image (`python3 /app/test_app.py`); exit code 1 on failure."""

import sys
import threading
import urllib.error
import urllib.request

sys.path.insert(0, "/app")
import app  # noqa: E402


def get(server, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def main():
    server = app.Server(("127.0.0.1", 0), app.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failures = []
    for path, status, text in (("/health", 200, "ok"), ("/", 200, "message=")):
        got, body = get(server, path)
        ok = got == status and text in body
        print(f"{'ok  ' if ok else 'FAIL'} GET {path}: {got} {body.strip()[:60]}")
        if not ok:
            failures.append(path)
    server.shutdown()
    print(f"{2 - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
