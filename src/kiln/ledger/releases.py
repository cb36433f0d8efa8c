"""Releases: append-only, numbered per app/env (v1, v2, …); what became of each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, assert_never

from sqlalchemy import func, select

from kiln.errors import LedgerError, NotFound
from kiln.ledger.db import Database, now
from kiln.ledger.kinds import SUCCEEDED, RolloutState
from kiln.ledger.schema import ReleaseRow, RolloutRow

if TYPE_CHECKING:  # pydantic models: imported on first use
    from kiln.spec.resolve import EnvConfig


@dataclass(frozen=True)
class Release:
    app: str
    env: str
    number: int
    image: str
    image_tag: str
    inputs_hash: str
    config: dict[str, Any]
    config_digest: str
    spec_digest: str
    commit: str | None
    dirty: bool
    note: str
    created_at: datetime
    origin: str = ""


    def env_config(self) -> EnvConfig:
        """The resolved config this release recorded; LedgerError when this kiln cannot read it."""
        from pydantic import ValidationError

        from kiln.spec.resolve import EnvConfig

        try:
            return EnvConfig.model_validate(self.config)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:3])
            raise LedgerError(
                f"release v{self.number} of {self.app}/{self.env} records a config this kiln cannot read: {problems}.",
                "It was probably recorded by another kiln version; deploy a new release, or use that version.",
            ) from None


def _release(row: ReleaseRow) -> Release:
    try:
        config = json.loads(row.config)
    except ValueError:
        raise LedgerError(f"release v{row.number} of {row.app}/{row.env} has a corrupt config in the ledger "
                          "(not JSON).", "Deploy a new release; this one cannot be rolled out again.") from None
    return Release(row.app, row.env, row.number, row.image, row.image_tag, row.inputs_hash, config,
                   row.config_digest, row.spec_digest, row.commit, row.dirty, row.note, row.created_at,
                   row.origin or "")


class Releases:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, *, app: str, env: str, image: str, image_tag: str, inputs_hash: str,
               config: dict[str, Any], config_digest: str, spec_digest: str,
               commit: str | None, dirty: bool, note: str = "", origin: str = "") -> Release:
        """Append the next release (v1, v2, …) of app/env. Numbers are never reused."""
        with self.db.session() as s, s.begin():
            last = s.scalar(select(func.max(ReleaseRow.number)).where(ReleaseRow.app == app, ReleaseRow.env == env))
            row = ReleaseRow(app=app, env=env, number=(last or 0) + 1, image=image, image_tag=image_tag,
                             inputs_hash=inputs_hash, config=json.dumps(config, sort_keys=True),
                             config_digest=config_digest, spec_digest=spec_digest, commit=commit,
                             dirty=dirty, note=note, created_at=now(), origin=origin)
            s.add(row)
        return _release(row)

    def of(self, app: str, env: str, limit: int | None = None) -> list[Release]:
        """app/env's releases, newest first."""
        with self.db.session() as s:
            q = (select(ReleaseRow).where(ReleaseRow.app == app, ReleaseRow.env == env)
                 .order_by(ReleaseRow.number.desc()).limit(limit))
            return [_release(r) for r in s.scalars(q)]

    def get(self, app: str, env: str, number: int) -> Release | None:
        with self.db.session() as s:
            row = s.scalar(select(ReleaseRow).where(ReleaseRow.app == app, ReleaseRow.env == env,
                                                    ReleaseRow.number == number))
            return _release(row) if row else None

    def with_image(self, app: str, image: str) -> Release | None:
        """The newest release of app (any environment) whose image is `image` (id, registry
        reference or tag)."""
        with self.db.session() as s:
            row = s.scalar(select(ReleaseRow).where(ReleaseRow.app == app, (ReleaseRow.image == image)
                                                    | (ReleaseRow.image_tag == image))
                           .order_by(ReleaseRow.id.desc()).limit(1))
            return _release(row) if row else None

    def require(self, app: str, env: str, number: int) -> Release:
        """Release `number` of app/env, a number a user gave: UsageError when there is none."""
        release = self.get(app, env, number)
        if release is None:
            raise NotFound(f"{app}/{env} has no release v{number}.", f"`kiln releases -e {env}` lists them.")
        return release

    def current(self, app: str, env: str) -> Release | None:
        """The release the last successful rollout put in service."""
        with self.db.session() as s:
            number = s.scalar(select(RolloutRow.to_release)
                              .where(RolloutRow.app == app, RolloutRow.env == env, RolloutRow.state == SUCCEEDED)
                              .order_by(RolloutRow.id.desc()).limit(1))
        return self.get(app, env, number) if number is not None else None

    def states(self, app: str, env: str) -> dict[int, str]:
        """What became of each release: serving, served (earlier), aborted, rolling out."""
        with self.db.session() as s:
            rows = s.execute(select(RolloutRow.to_release, RolloutRow.state)
                             .where(RolloutRow.app == app, RolloutRow.env == env).order_by(RolloutRow.id)).all()
        states: dict[int, str] = {}
        current = None  # the last successful rollout's release, as in current()
        for number, text in rows:
            state = RolloutState(text)
            match state:
                case RolloutState.SUCCEEDED:
                    states[number] = "served"
                    current = number
                case RolloutState.RUNNING | RolloutState.PAUSED:
                    if states.get(number) != "served":
                        states[number] = "rolling out"
                case RolloutState.ABORTED:
                    if number not in states:
                        states[number] = "aborted"
                case _:
                    assert_never(state)
        if current is not None:
            states[current] = "serving"
        return states

    def everywhere(self) -> list[tuple[str, str]]:
        """Every (app, environment) with at least one release."""
        with self.db.session() as s:
            return sorted((a, e) for a, e in s.execute(select(ReleaseRow.app, ReleaseRow.env).distinct()))

    def environments(self, app: str) -> list[str]:
        """Every environment of app with at least one release."""
        with self.db.session() as s:
            return sorted(s.scalars(select(ReleaseRow.env).where(ReleaseRow.app == app).distinct()))
