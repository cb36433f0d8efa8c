"""Smoke checks: one model (spec/smoke.py) behind a rollout's `smoke[]` and a pipeline's
`checks[]`, and one verdict on an answer, used by the rollout driver and the CI smoke step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from kiln.ci import plan
from kiln.probe import http_get
from kiln.rollout.driver import _smoke_problem
from kiln.spec import models, pipeline
from kiln.spec.smoke import Check, HttpCheck, SmokeCheck, check_problem


def test_both_places_use_the_one_model_with_their_own_timing_key():
    assert models.SmokeCheck is SmokeCheck and pipeline.Check is Check
    assert issubclass(SmokeCheck, HttpCheck) and issubclass(Check, HttpCheck)
    rollout = models.RolloutPolicy.model_validate({"smoke": [{"path": "/health", "body": "ok", "timeout": "2s"}]})
    assert rollout.smoke == (SmokeCheck(path="/health", body="ok", timeout=2.0),)
    step = pipeline.Step.model_validate({"smoke": "staging", "checks": [{"path": "/", "status": 204, "within": "1m"}]})
    assert step.checks == (Check(path="/", status=204, within=60.0),)
    assert SmokeCheck().timeout == 5.0 and Check().within == 10.0  # the defaults users had


@pytest.mark.parametrize(("model", "key"), [(SmokeCheck, "within"), (Check, "timeout")])
def test_each_place_keeps_its_keys_and_refuses_the_other_s(model, key):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate({key: 1})


@pytest.mark.parametrize("model", [SmokeCheck, Check])
def test_a_check_path_must_be_absolute_and_the_status_an_http_one(model):
    with pytest.raises(ValidationError, match="check path must start with '/', e.g. /health"):
        model(path="health")
    with pytest.raises(ValidationError):
        model(status=99)


@pytest.mark.parametrize("model", [SmokeCheck, Check])
def test_the_verdicts(model):
    check = model(path="/health", status=200, body="ok")
    assert check_problem(check, 200, "all ok") is None
    assert check_problem(model(), 200, "") is None  # no body asked for
    assert check_problem(check, 503, "ok") == "status 503, expected 200"
    # the answer is never quoted: a verdict lands where every viewer reads it
    assert check_problem(check, 200, "fine") == "the body does not contain 'ok'"
    assert check_problem(check, 200, "x" * 200) == "the body does not contain 'ok'"
    assert check_problem(check, None, "", "ConnectionRefusedError") == "no answer (ConnectionRefusedError)"
    assert check_problem(check, None, "") == "no answer"


def test_the_ci_plan_names_the_same_verdict():
    assert plan.check_problem is check_problem


@pytest.fixture
def server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code, text = {"/health": (200, "ok: ready"), "/down": (503, "down")}.get(self.path, (404, "no"))
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_driver_sends_one_request_and_judges_it_with_the_one_verdict(server: int):
    def at(port: int):
        return lambda check: http_get("127.0.0.1", port, check.path, check.timeout)

    assert _smoke_problem(SmokeCheck(path="/health", body="ready"), at(server)) is None
    assert _smoke_problem(SmokeCheck(path="/down"), at(server)) == "status 503, expected 200"
    assert _smoke_problem(SmokeCheck(path="/health", body="nope"), at(server)) == (
        "the body does not contain 'nope'")
    refused = _smoke_problem(SmokeCheck(timeout=1.0), at(1))
    assert refused is not None and refused.startswith("no answer (ConnectionRefusedError: ")
