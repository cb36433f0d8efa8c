"""Named points where a fault-injection run may kill kiln (`KILN_FAULT=routed kiln deploy`).

kiln's promise is that `kill -9` at any instant of a rollout loses nothing; the crash tests and
benchmarks use these points to hit the instants that matter deterministically. Unset, a point
costs one dictionary lookup."""

from __future__ import annotations

import os
import signal

POINTS = ("started", "routed", "draining", "switched")


def point(name: str) -> None:
    if os.environ.get("KILN_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
