"""One exception tree for everything kiln reports to a user.

    KilnError                    exit 1, one clear sentence + what to do
    ├── SpecError                exit 2, "kiln.yaml:LINE: key.path: problem"
    ├── UsageError               exit 2, a wrong argument (unknown environment, release…)
    │   ├── SecretMissing        a `secret:NAME` reference has no value to start a container with
    │   ├── NotFound             no such app, environment, release, rollout, run or token (HTTP 404)
    │   └── NameTaken            an environment's router or network name belongs to another environment
    ├── EngineError              the Docker engine failed or is unreachable
    │   └── PortInUse            the router's public port is taken by someone else
    ├── BuildError               a base or app image could not be baked
    │   └── SecretInContext      the build context holds something that looks like a secret
    ├── LedgerError              the ledger database cannot be opened or migrated
    ├── RouterError              HAProxy's runtime API refused a command
    ├── RolloutError             a rollout was aborted; the previous release keeps serving
    │   └── FactsChanged         an agent's pass met a failure it had not judged; it passes again
    ├── LockHeld                 another kiln process holds the environment's lock
    ├── LockLost                 this process lost the lock mid-change (its lease ran out)
    ├── PipelineError            a pipeline run cannot start, or one of its steps failed
    │   └── PolicyRefused        a run asks for more than its ref may do (ci/trust.py); nothing ran
    ├── SecretError              the secret store cannot be read or written (key missing or wrong)
    ├── WebhookRejected          a webhook's signature or token is wrong (answered 401)
    ├── PushRefused              a push the admission rules refuse: seen before, or older than its ref's last run (409)
    └── Forbidden                an API token is missing or wrong (401), or its role may not (403)

The CLI catches KilnError, prints `message` (and `hint`), and exits with `exit_code`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class KilnError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class SpecIssue:
    """One problem found in a spec file, pointing at a line and a key path."""

    __slots__ = ("file", "line", "path", "problem")

    def __init__(self, file: str, line: int | None, path: str, problem: str) -> None:
        self.file, self.line, self.path, self.problem = file, line, path, problem

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.problem}" if self.path else f"{where}: {self.problem}"

    def __repr__(self) -> str:
        return f"SpecIssue({str(self)!r})"


class SpecError(KilnError):
    exit_code = 2

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class UsageError(KilnError):
    exit_code = 2


class NameTaken(UsageError):
    """Names join app and environment with '-', which names may contain: `shop` + `eu-prod` and
    `shop-eu` + `prod` both lead to `kiln-shop-eu-prod`. The first one keeps it; kiln never
    touches an object whose labels name another environment."""


class SecretMissing(UsageError):
    pass


class NotFound(UsageError):
    pass


class EngineError(KilnError):
    pass


class PortInUse(EngineError):
    pass


class BuildError(KilnError):
    pass


class SecretInContext(BuildError):
    pass


class LedgerError(KilnError):
    pass


class RouterError(KilnError):
    pass


class RolloutError(KilnError):
    pass


class FactsChanged(RolloutError):
    """Raised inside an agent's pass: another instance failed meanwhile. The pass stops, so that
    the failure is counted (and may trip the meltdown guard) before anything replaces it."""


class LockHeld(KilnError):
    """Another kiln process holds app/env's lock. `lock` is the holder's kiln.ledger.locks.Lock
    (typed loosely: this module imports nothing of kiln's)."""

    def __init__(self, lock: Any, at: datetime) -> None:
        self.lock = lock
        # the ledger's times are naive UTC
        since = lock.acquired_at.strftime("%H:%M:%S UTC" if lock.acquired_at.date() == at.date() else "%Y-%m-%d %H:%M:%S UTC")
        beat = max(0, round((at - lock.heartbeat_at).total_seconds()))
        why = f" ({lock.reason})" if lock.reason else ""
        super().__init__(
            f"{lock.app}/{lock.env} is locked by {lock.holder}{why} since {since}, heartbeat {beat}s ago.",
            f"Wait for it to finish, or if that process is gone: `kiln lock release --force -e {lock.env}` "
            f"(or wait for the lease of {lock.lease_seconds:g}s to expire).")


class LockLost(KilnError):
    """The lock was taken over or force-released while this process changed the environment.
    The process stops at once without touching anything more: the new holder settles the rollout."""


class PipelineError(KilnError):
    """A `kiln ci` run could not start (checkout, spec, queue) or a step failed; nothing after
    the failing step ran, so what was serving keeps serving."""


class PolicyRefused(PipelineError):
    """A pushed commit's pipeline asks for rights its ref does not have (a deploy or promotion
    target, a promotion without approval, a secret, the app): the run fails before anything runs.
    `refusals` holds one sentence per widened right."""

    def __init__(self, refusals: list[str], hint: str | None = None) -> None:
        super().__init__("; ".join(refusals), hint)
        self.refusals = refusals


class SecretError(KilnError):
    pass


class WebhookRejected(KilnError):
    pass


class PushRefused(KilnError):
    """A pushed commit that starts no run (usecases/pushes.py): a delivery id seen before, a commit
    its ref already ran, or one older than the ref's last run."""


class Forbidden(KilnError):
    """`status` is 401 (no token, or one kiln does not know) or 403 (its role may not)."""

    def __init__(self, message: str, status: int = 403, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
