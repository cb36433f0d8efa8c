"""Changes asked through `kiln serve` (its API and its dashboard's forms): each runs the use case
the CLI runs (which takes the environment's lock), as a token, on a Context of its own (the lock
it holds is its own); an event names the token and says what came of it, or why it failed
(kinds.API_ACTION, API_ACTION_FAILED). What the use case said along the way comes back with the
result, ending with that summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from kiln import views
from kiln.access import Token
from kiln.context import Context
from kiln.errors import KilnError
from kiln.ledger import kinds
from kiln.output import Output
from kiln.spec.loader import LoadedSpec
from kiln.usecases import ci_runs
from kiln.usecases.deploy import Outcome

T = TypeVar("T")


class Said(Output):
    """A use case's progress, kept (for the action's answer), not printed."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def step(self, message: str) -> None:
        self.lines.append(message)

    def done(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(message)


def act(base: Context, token: Token, app: str, env: str, what: str, do: Callable[[Context], T],
        summary: Callable[[T], str]) -> tuple[T, list[str]]:
    """Run `do` as `token` on a Context of its own and record the event; KilnErrors go on to the
    caller. Returns its result and what it said, ending with `summary` of the result."""
    out = Said()
    ctx = base.derive(out, own_engines=True)
    who = f"{what} by token {token.name} ({token.role})"
    try:
        result = do(ctx)
    except KilnError as exc:
        ctx.ledger.events.record(app, env, kinds.API_ACTION_FAILED, f"{who} failed: {exc.message}")
        raise
    said = summary(result)
    ctx.ledger.events.record(app, env, kinds.API_ACTION, f"{who}: {said}")
    return result, out.lines + [said]


def outcome_said(outcome: Outcome) -> str:
    n = outcome.release.number
    if outcome.state == kinds.PAUSED:
        return f"v{n} waits for promotion"
    return f"v{n} serving" if outcome.changed else f"v{n} already serving"


def _change(base: Context, token: Token, app: str, env: str, what: str,
            do: Callable[[Context], Outcome]) -> views.ActionOutcome:
    outcome, said = act(base, token, app, env, what, do, outcome_said)
    return views.ActionOutcome(**views.Outcome.fields_of(outcome), said=said)


def deploy(base: Context, token: Token, loaded: LoadedSpec, env: str, image: str,
           strategy: str | None) -> views.ActionOutcome:
    """Deploy an image a release of the app recorded (no bake)."""
    from kiln.usecases.deploy import deploy_image

    return _change(base, token, loaded.spec.app, env, f"deploy {image}",
                   lambda c: deploy_image(c, loaded, env, image, strategy))


def rollback(base: Context, token: Token, loaded: LoadedSpec, env: str, to: int | None,
             strategy: str | None) -> views.ActionOutcome:
    from kiln.usecases.deploy import rollback as do

    return _change(base, token, loaded.spec.app, env, f"rollback to v{to}" if to else "rollback",
                   lambda c: do(c, loaded.spec, env, to, strategy))


def promote(base: Context, token: Token, app: str, env: str) -> views.ActionOutcome:
    """Switch traffic to the blue-green release waiting for promotion."""
    from kiln.usecases.deploy import promote as do

    return _change(base, token, app, env, "promote", lambda c: do(c, app, env))


def promote_artifact(base: Context, token: Token, loaded: LoadedSpec, source: str, to: str,
                     strategy: str | None) -> views.ActionOutcome:
    from kiln.usecases.environments import promote_artifact as do

    return _change(base, token, loaded.spec.app, to, f"promote {source} → {to}",
                   lambda c: do(c, loaded, source, to, strategy))


def abort(base: Context, token: Token, app: str, env: str) -> views.AbortOutcome:
    from kiln.usecases.deploy import abort as do

    rollout, said = act(base, token, app, env, "abort", lambda c: do(c, app, env, f"token {token.name}"),
                        lambda r: f"rollout {r.id} to v{r.to_release} {r.state}")
    return views.AbortOutcome(**views.Rollout.of(rollout).model_dump(), said=said)


def ci(base: Context, token: Token, run_id: int, what: str) -> views.CiAction:
    """Approve or cancel CI run `run_id` (the event goes to the run's app, environment "ci")."""
    found = ci_runs.run(base, run_id)
    do: Callable[[Context], object] = (lambda c: ci_runs.approve(c, run_id, f"token {token.name}")) \
        if what == "approve" else (lambda c: ci_runs.cancel(c, run_id))
    _, said = act(base, token, found.app or "-", "ci", f"{what} CI run {run_id}", do, lambda _: "done")
    return views.CiAction(run=ci_runs.run(base, run_id), said=said)
