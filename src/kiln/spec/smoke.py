"""HTTP smoke checks: the one model of what a check asks of an answer (a rollout's
`services.NAME.rollout.smoke[]` and a pipeline smoke step's `checks[]`), and the one verdict on
an answer. Pure: the callers send the requests.

The two places differ only in timing, so each adds its own key: a rollout's check is sent once,
with a `timeout`; a pipeline's is retried `within` a deadline (the environment may still be
starting). Imports nothing of spec/models.py or spec/pipeline.py (both import it)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln.spec.durations import Duration

# The characters of a URL's path and query (RFC 3986: unreserved, sub-delims, ':', '@', '/', '?',
# '%'): no space, quote, backslash, '#', control or non-ASCII character. Paths reach HTTP request
# lines and haproxy.cfg (`option httpchk GET PATH`), where a newline would inject config.
_URL_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
PATH_MAX = 1024


def path_problem(path: str, what: str) -> str | None:
    """Why `path` cannot be an HTTP path kiln sends (`what` names it: 'http path', 'check
    path'), or None."""
    if not path.startswith("/"):
        return f"{what} must start with '/', e.g. /{path}"
    if len(path) > PATH_MAX or not _URL_PATH.fullmatch(path):
        return (f"{what} {path[:80]!r} may hold only the characters of a URL path and query (letters, digits and "
                f"-._~!$&'()*+,;=:@/?%; at most {PATH_MAX}): no spaces, quotes, '#', '\\' or control characters")
    return None


class HttpCheck(BaseModel):
    """A GET of `path` whose answer must have `status` and, if given, contain `body`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field("/", description="path to GET, e.g. /health")
    status: int = Field(200, ge=100, le=599, description="expected HTTP status")
    body: str | None = Field(None, description="text the response body must contain")

    @model_validator(mode="after")
    def _path(self) -> HttpCheck:
        problem = path_problem(self.path, "check path")
        if problem:
            raise ValueError(problem)
        return self


class SmokeCheck(HttpCheck):
    """An HTTP request sent to the new release (blue-green: on the preview port) before it gets traffic."""

    timeout: Duration = Field(5.0, description="time the request may take")


class Check(HttpCheck):
    """An HTTP request sent to an environment's public URL; retried until it passes or `within` ends."""

    within: Duration = Field(10.0, description="how long the check may keep failing before the step fails")


def check_problem(check: HttpCheck, status: int | None, body: str, error: str = "") -> str | None:
    """Why one answer fails `check` (None: it passes). `status` None is no answer at all, with
    `error` saying why (refused, timed out, bad HTTP)."""
    if status is None:
        return f"no answer ({error})" if error else "no answer"
    if status != check.status:
        return f"status {status}, expected {check.status}"
    if check.body is not None and check.body not in body:
        # Never quote the answer: a verdict lands in a run's reason and log, which every viewer
        # reads, and the answer may be anything the target holds.
        return f"the body does not contain {check.body!r}"
    return None
