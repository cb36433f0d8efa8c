"""The ledger's tables. Releases are append-only: a row is written once and never updated.
Changes to these models ship with an Alembic migration in migrations/versions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kiln.ledger.tables import Table


class ReleaseRow(Table):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app", "env", "number", name="uq_release_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(128))  # sha256:… image id
    image_tag: Mapped[str] = mapped_column(String(256))
    inputs_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[str] = mapped_column(Text)  # resolved config, canonical JSON
    config_digest: Mapped[str] = mapped_column(String(64))
    spec_digest: Mapped[str] = mapped_column(String(64))
    commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dirty: Mapped[bool] = mapped_column(default=False)
    note: Mapped[str] = mapped_column(String(256), default="")  # e.g. "rollback to v1"
    created_at: Mapped[datetime] = mapped_column()
    # where the artifact came from when not baked here: "promoted from staging v4", "recreated
    # from production v1", "imported from …" (a manifest)
    origin: Mapped[str] = mapped_column(Text, default="", server_default="")


class RolloutRow(Table):
    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_app_env", "app", "env"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    from_release: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_release: Mapped[int] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # running, paused, succeeded, aborted
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    phase: Mapped[str] = mapped_column(String(32), default="", server_default="")  # the strategy's step
    data: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")  # its state machine's data, JSON
    # who asked to abort it while it ran (the process running it aborts at its next check)
    abort_by: Mapped[str] = mapped_column(String(128), default="", server_default="")


class StepRow(Table):
    __tablename__ = "rollout_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))  # started, done, failed
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column()


class EventRow(Table):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_app_env", "app", "env"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column()


class LockRow(Table):
    """At most one row per app/env: the kiln process that may change that environment.

    Whoever holds `token` owns the lock; every write is conditional on it, so a holder that lost
    the lock (taken over after its lease expired, or force-released) cannot touch the new one."""

    __tablename__ = "locks"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    env: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    acquired_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()
    lease_seconds: Mapped[float] = mapped_column(Float)


class EnvironmentRow(Table):
    """An environment kiln made that kiln.yaml does not declare: a recreated release or a preview.
    Its resolved config lives in its releases; this row gives it a port and, for previews, an end."""

    __tablename__ = "environments"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    env: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # recreated, preview
    port: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(Text)  # "production v1", "ref main (3f2a…)"
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)


class PinRow(Table):
    """A release `kiln gc` must keep (its image, whatever its age)."""

    __tablename__ = "pins"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    env: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    pinned_at: Mapped[datetime] = mapped_column()


class TokenRow(Table):
    """An API token of `kiln serve`: only the SHA-256 of the token is stored, never the token."""

    __tablename__ = "tokens"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer, deployer, admin
    envs: Mapped[str] = mapped_column(Text, default="[]")  # JSON list; [] = every environment
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    created_at: Mapped[datetime] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SampleRow(Table):
    """Traffic of one release of an environment over one interval, from HAProxy's per-server
    counters (sampled by the agent); kept for a retention, then pruned."""

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_app_env_at", "app", "env", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    release: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column()  # the end of the interval
    seconds: Mapped[float] = mapped_column(Float)  # its length
    requests: Mapped[int] = mapped_column(Integer)  # HTTP responses in the interval
    errors: Mapped[int] = mapped_column(Integer)  # 5xx among them
    response_ms: Mapped[float] = mapped_column(Float)  # HAProxy's rtime, weighted by responses
