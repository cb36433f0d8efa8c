"""Names the ledger stores: rollout and pipeline states, event kinds and the actions of a
rollout's steps.

Every writer uses these constants; they are data, never derived from a class name, so renaming
code cannot change what is stored (tests/unit/test_ledger.py pins each value). A closed set of
states is an `enum.StrEnum`: its members are the very strings the rows hold (a member equals its
text, and `str()` and f-strings give that text), so rows written before the enums existed read
back as members. Readers of older ledgers (`kiln events`, `kiln rollout show`, integration
tests) see the same strings."""

from __future__ import annotations

from enum import StrEnum
from typing import assert_never

# --- rollouts: RolloutRow.state ------------------------------------------------------------------


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # a blue-green release waits for `kiln promote`
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"


RUNNING, PAUSED, SUCCEEDED, ABORTED = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.SUCCEEDED,
                                       RolloutState.ABORTED)
ROLLOUT_STATES = tuple(RolloutState)
UNFINISHED = (RUNNING, PAUSED)

# --- pipeline runs and their steps: CiRunRow.state, CiStepRow.state --------------------------------


class RunState(StrEnum):
    """Where a pipeline run is. A run holds its queue while running or waiting (for an approval)."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # a manual promotion waits for `kiln ci approve`
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"  # a newer run of its queue came while it was queued

    @property
    def final(self) -> bool:
        """The run has ended (it records when)."""
        match self:
            case RunState.SUCCEEDED | RunState.FAILED | RunState.CANCELLED | RunState.SUPERSEDED:
                return True
            case RunState.QUEUED | RunState.RUNNING | RunState.WAITING:
                return False
            case _:
                assert_never(self)

    @property
    def active(self) -> bool:
        """The run holds its queue: no other run of its ref starts meanwhile."""
        match self:
            case RunState.RUNNING | RunState.WAITING:
                return True
            case RunState.QUEUED | RunState.SUCCEEDED | RunState.FAILED | RunState.CANCELLED | RunState.SUPERSEDED:
                return False
            case _:
                assert_never(self)


class StepState(StrEnum):
    """Where one step of a pipeline run is."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"  # a manual promotion waits for `kiln ci approve`
    APPROVED = "approved"  # `kiln ci approve` let it go; its runner carries on
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # its filters left it out, or an earlier step did not succeed
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """The step will not run (any more)."""
        match self:
            case StepState.SUCCEEDED | StepState.FAILED | StepState.SKIPPED | StepState.CANCELLED:
                return True
            case StepState.PENDING | StepState.RUNNING | StepState.WAITING | StepState.APPROVED:
                return False
            case _:
                assert_never(self)


# --- rollout steps: StepRow.action -----------------------------------------------------------------
# Written by the rollout executor (one per plan action) and the driver (one per strategy phase).

STEP_START = "Start"  # create and start a new instance
STEP_AWAIT_HEALTHY = "AwaitHealthy"  # wait until the instance passes its own healthcheck
STEP_ROUTE = "Route"  # add it to the router (or set its weight) and wait for the router's check
STEP_UNROUTE = "Unroute"  # drain it and take it out of the router
STEP_REMOVE = "Remove"  # stop and remove the container
STEP_PHASE = "Phase"  # a phase of the rollout strategy (target: the phase's name)

STEP_ACTIONS = (STEP_START, STEP_AWAIT_HEALTHY, STEP_ROUTE, STEP_UNROUTE, STEP_REMOVE, STEP_PHASE)


class ActionState(StrEnum):
    """StepRow.state: each journalled action is recorded as it starts and again as it ends."""

    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


# RolloutRow.phase holds "" before the first phase, then each phase (rollout/strategy.Phase) as
# it runs, and this once the last one has run.
PHASES_DONE = "done"

# --- events: EventRow.kind -------------------------------------------------------------------------

# rollouts (usecases/deploy.py)
ROLLOUT_STARTED = "rollout.started"
ROLLOUT_RESUMED = "rollout.resumed"
ROLLOUT_PAUSED = "rollout.paused"
ROLLOUT_SUCCEEDED = "rollout.succeeded"
ROLLOUT_ABORTED = "rollout.aborted"

# actions asked through `kiln serve` (server/plane.py): "WHAT by token NAME (ROLE): outcome"
API_ACTION = "api.action"
API_ACTION_FAILED = "api.action.failed"

# environments (usecases/environments.py, usecases/destroy.py)
PROMOTED = "promoted"
PREVIEW_PRUNED = "preview.pruned"
DESTROYED = "destroyed"
NODE_DRAINED = "node.drained"  # a cluster node's instances were replaced elsewhere (kiln node drain)

# instances, as the agent judges them (agent/reconcile.py)
INSTANCE_FAILED = "instance.failed"  # "NAME: how"; counted by the meltdown guard
INSTANCE_LOST = "instance.lost"
INSTANCE_TAINTED = "instance.tainted"  # "NAME: reason; reason"; read back by `kiln drift`
INSTANCE_REPLACED = "instance.replaced"

# the agent itself (agent/reconcile.py, agent/loop.py)
AGENT_LEADING = "agent.leading"
AGENT_RESIGNED = "agent.resigned"
AGENT_ROUTER = "agent.router"
AGENT_FAILED = "agent.failed"
AGENT_RESTORED = "agent.restored"
AGENT_HALTED = "agent.halted"
AGENT_RESUMED = "agent.resumed"

# an agent's pass journals each finished action as an event rather than a rollout step
AGENT_START = "agent.start"
AGENT_AWAIT_HEALTHY = "agent.awaithealthy"
AGENT_ROUTE = "agent.route"
AGENT_UNROUTE = "agent.unroute"
AGENT_REMOVE = "agent.remove"
AGENT_ACTION_EVENTS = {
    STEP_START: AGENT_START,
    STEP_AWAIT_HEALTHY: AGENT_AWAIT_HEALTHY,
    STEP_ROUTE: AGENT_ROUTE,
    STEP_UNROUTE: AGENT_UNROUTE,
    STEP_REMOVE: AGENT_REMOVE,
}
