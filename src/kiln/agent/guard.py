"""Which instances failed, and whether healing should stop (the meltdown guard). Pure.

A failed instance is dead (exited, killed, OOM-killed, removed under the router) or unhealthy:
down in the router's own checks, or, for a service without router, failing its health check on
two passes in a row. Replacing failed instances is right while failures are rare; when more of
an environment's instances fail within a window than the policy allows, the cause is something
replacing cannot fix (a bad host, a dependency down), and churning would only add load. Then
the agent stops replacing, says so, and resumes once the failures have aged out of the window."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.rollout.plan import Instance
from kiln.spec.models import Meltdown

GONE = "its container is gone"
UNROUTED = "not serving in the router (down in its health checks)"


@dataclass(frozen=True)
class Health:
    failed: dict[str, str]  # instance -> why
    suspects: frozenset[str]  # failing a check once: failed if they fail again on the next pass

    @property
    def dead(self) -> frozenset[str]:
        return frozenset(n for n, why in self.failed.items() if why in ("exited", GONE))


def judge(facts: list[Instance], routed: str | None, suspects: frozenset[str]) -> Health:
    failed: dict[str, str] = {}
    now_suspect = set()
    for i in facts:
        if not i.running:
            failed[i.name] = GONE if i.release < 0 else "exited"
        elif i.service == routed:
            if i.in_router and not i.ready:
                failed[i.name] = UNROUTED
        elif not i.ready:
            if i.name in suspects:
                failed[i.name] = "failed its health check twice in a row"
            else:
                now_suspect.add(i.name)
    return Health(failed, frozenset(now_suspect))


def limit(policy: Meltdown, instances: int) -> int:
    """Failures within the window that are still healed; at least one, so a lone instance heals."""
    value = policy.max_failures
    if isinstance(value, str):  # a share, "50%"
        return max(1, math.floor(instances * int(value[:-1]) / 100))
    return max(1, value)


def halted(failures: int, policy: Meltdown, instances: int) -> bool:
    return failures > limit(policy, instances)
