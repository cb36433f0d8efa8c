"""The three rollout strategies as pure decisions: which phases a rollout goes through, what
happens to one interrupted in each phase, the router weights of a canary step, and whether a
canary is worse than its baseline.

A rollout is a list of phases, persisted by index in the ledger as it goes:

    rolling     before_traffic, roll, after_traffic
    blue-green  start, before_traffic, smoke, [promotion], switch, after_traffic
    canary      start, before_traffic, smoke, shift:0 … shift:N-1, switch, after_traffic

`start` brings the whole new set up beside the old one at weight 0 (blue-green: reachable on
the preview port); `roll` replaces instances in batches (max_surge / max_unavailable);
`switch` gives the new set all the traffic and retires (or, blue-green with keep_old, idles)
the old one.

A phase is a `Phase` value: its kind, and for a canary's `shift` the index of its step in the
policy's `steps`. The ledger stores its text (`shift:1`); `Phase.parse` reads that text back and
`str()` writes it, the one place either happens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never

from kiln.router.haproxy_api import FULL_WEIGHT
from kiln.spec.models import Analysis, RolloutPolicy

MAX_WEIGHT = 256  # HAProxy's largest server weight


class PhaseKind(StrEnum):
    """What a phase does; the value is the stored name (the prefix before `:` of a shift)."""

    BEFORE_TRAFFIC = "before_traffic"
    ROLL = "roll"
    START = "start"
    SMOKE = "smoke"
    PROMOTION = "promotion"
    SHIFT = "shift"
    SWITCH = "switch"
    AFTER_TRAFFIC = "after_traffic"

    @property
    def moves_traffic(self) -> bool:
        """Whether traffic has started to move for good once this phase was reached: an
        interrupted rollout is then completed, not undone."""
        match self:
            case PhaseKind.ROLL | PhaseKind.SWITCH | PhaseKind.AFTER_TRAFFIC:
                return True
            case PhaseKind.BEFORE_TRAFFIC | PhaseKind.START | PhaseKind.SMOKE | PhaseKind.PROMOTION | PhaseKind.SHIFT:
                return False
            case _:
                assert_never(self)


@dataclass(frozen=True)
class Phase:
    """One phase of a rollout. `index` is a shift's canary step (policy.steps[index]), and only a
    shift's: `Phase.parse(str(p)) == p` for every phase, and `str(Phase.parse(t)) == t` for every
    text a ledger holds."""

    kind: PhaseKind
    index: int | None = None

    def __post_init__(self) -> None:
        if (self.kind is PhaseKind.SHIFT) != (self.index is not None) or (self.index or 0) < 0:
            raise ValueError(f"a {self.kind} phase {'needs' if self.kind is PhaseKind.SHIFT else 'has no'} "
                             f"step index (got {self.index!r})")

    @classmethod
    def parse(cls, text: str) -> Phase:
        """The phase a ledger recorded as `text`; ValueError when it names none."""
        name, colon, index = text.partition(":")
        if colon and not (index.isdigit() and str(int(index)) == index):
            raise ValueError(f"{text!r} is not a phase: its step index is not a number")
        return cls(PhaseKind(name), int(index) if colon else None)

    def __str__(self) -> str:
        return str(self.kind) if self.index is None else f"{self.kind}:{self.index}"


def phases(policy: RolloutPolicy, has_before: bool, has_after: bool) -> list[Phase]:
    before = [Phase(PhaseKind.BEFORE_TRAFFIC)] if has_before else []
    after = [Phase(PhaseKind.AFTER_TRAFFIC)] if has_after else []
    if policy.strategy == "rolling":
        return [*before, Phase(PhaseKind.ROLL), *after]
    out = [Phase(PhaseKind.START), *before]
    if policy.smoke:
        out.append(Phase(PhaseKind.SMOKE))
    if policy.strategy == "blue-green":
        if policy.promote == "manual":
            out.append(Phase(PhaseKind.PROMOTION))
    else:
        out += [Phase(PhaseKind.SHIFT, i) for i, step in enumerate(policy.steps) if step.weight < 100]
    return [*out, Phase(PhaseKind.SWITCH), *after]


def resume_forward(phase_list: list[Phase], reached: int) -> bool:
    """An interrupted rollout is completed once traffic has started to move for good (the switch,
    or any phase of a rolling rollout past its hook), and undone before: a canary whose analysis
    or a blue-green set whose smoke checks did not finish has not earned the traffic."""
    return reached >= len(phase_list) or phase_list[reached].kind.moves_traffic


def count(value: int | str, replicas: int, round_up: bool) -> int:
    """max_surge / max_unavailable as an instance count: percentages round up for surge (never
    stall) and down for unavailability (never drop more than asked)."""
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * replicas / 100
    return math.ceil(share) if round_up else math.floor(share)


def canary_weights(new: list[str], old: list[str], percent: int) -> dict[str, int]:
    """Server weights that send `percent` of requests to the new servers, spread evenly."""
    if not old or percent >= 100:
        return {**{n: FULL_WEIGHT for n in new}, **{o: 0 for o in old}}
    if not new or percent <= 0:
        return {**{n: 0 for n in new}, **{o: FULL_WEIGHT for o in old}}
    # Solve len(new)*wn / (len(new)*wn + len(old)*wo) = percent/100 for the ratio wn/wo, then put
    # the larger side at HAProxy's maximum weight, 256, for the finest split.
    ratio = percent * len(old) / ((100 - percent) * len(new))
    wn, wo = (MAX_WEIGHT, MAX_WEIGHT / ratio) if ratio >= 1 else (MAX_WEIGHT * ratio, MAX_WEIGHT)
    wn_i, wo_i = max(1, round(wn)), max(1, round(wo))
    return {**{n: wn_i for n in new}, **{o: wo_i for o in old}}


@dataclass(frozen=True)
class Sample:
    """Responses of a group of servers since the step began, and their mean response time."""

    responses: int
    errors: int  # 5xx
    mean_ms: float

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.responses if self.responses else 0.0


def judge(canary: Sample, baseline: Sample, rules: Analysis) -> str | None:
    """Why the canary is worse than the baseline, or None while it is not (yet)."""
    if canary.responses >= rules.min_requests and canary.error_rate > rules.max_error_rate:
        return (f"canary error rate {canary.error_rate:.1f}% ({canary.errors} of {canary.responses} responses "
                f"were 5xx) is above max_error_rate {rules.max_error_rate:g}% (baseline {baseline.error_rate:.1f}%)")
    enough = canary.responses >= rules.min_requests and baseline.responses >= rules.min_requests
    floor_ms = rules.min_latency * 1000
    if enough and canary.mean_ms > floor_ms and canary.mean_ms > rules.max_latency_ratio * baseline.mean_ms:
        return (f"canary mean response time {canary.mean_ms:.0f} ms is above {rules.max_latency_ratio:g}x "
                f"the baseline's {baseline.mean_ms:.0f} ms")
    return None
