"""Webhook push events of GitHub and GitLab: verification and parsing. Pure.

GitHub signs the raw body: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, and
names each delivery in `X-GitHub-Delivery`. GitLab sends the secret itself in `X-Gitlab-Token`
and a delivery id in `X-Gitlab-Event-UUID` (older versions: `Idempotency-Key`). Comparisons are
constant-time (hmac.compare_digest). A push's `after` must be a full commit id and its `ref` a
valid full ref name (`kiln.git.is_commit`, `is_ref`): they reach git."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate

from kiln.errors import WebhookRejected
from kiln.git import is_commit, is_ref

ZERO = "0" * 40
MAX_DEPTH = 32  # nesting of a payload's JSON arrays and objects (a push event needs about 5)
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+\\?(?:"|\Z)', re.S)  # always matches from a quote: linear
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body`, found without parsing (so a hostile
    depth never reaches the recursive parser) and at C speed: strings removed, then the running
    sum of the brackets (+1 open, -1 close). Unbalanced opening brackets count as nesting."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


@dataclass(frozen=True)
class Push:
    source: str  # github, gitlab
    delivery: str
    ref: str
    commit: str  # the pushed commit; ZERO for a deleted ref


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    given = headers.get("x-hub-signature-256", "")
    if not given or not hmac.compare_digest(given.encode(), github_signature(secret, body).encode()):
        raise WebhookRejected("the X-Hub-Signature-256 signature does not match the body.")


def verify_gitlab(secret: str, headers: Mapping[str, str]) -> None:
    given = headers.get("x-gitlab-token", "")
    if not given or not hmac.compare_digest(given.encode(), secret.encode()):
        raise WebhookRejected("the X-Gitlab-Token does not match.")


def parse(source: str, body: bytes, headers: Mapping[str, str]) -> tuple[str, Push | None]:
    """(delivery id, the push) from a verified request; the push is None for other events
    (a GitHub ping, a GitLab tag or merge-request event kiln does not act on)."""
    if source == "github":
        delivery, event = headers.get("x-github-delivery", ""), headers.get("x-github-event", "")
        is_push = event == "push"
    else:
        delivery = headers.get("x-gitlab-event-uuid") or headers.get("idempotency-key", "")
        event = headers.get("x-gitlab-event", "")
        is_push = event in ("Push Hook", "Tag Push Hook")
    if not delivery:
        raise ValueError("the request names no delivery id, so a replay could not be told apart")
    if not is_push:
        return delivery, None
    if json_depth(body) > MAX_DEPTH:
        raise ValueError(f"the push event nests JSON deeper than {MAX_DEPTH} levels")
    try:
        payload = json.loads(body)
        ref, commit = str(payload["ref"]), str(payload["after"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("the push event has no 'ref' and 'after'") from None
    if not is_commit(commit):
        raise ValueError(f"the push event's 'after' {commit[:80]!r} is not a full commit id (40 or 64 hex digits)")
    if not is_ref(ref):
        raise ValueError(f"the push event's 'ref' {ref[:80]!r} is not a valid full ref name (refs/...)")
    return delivery, Push(source, delivery, ref, commit)
