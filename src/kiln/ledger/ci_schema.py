"""The ledger's pipeline tables: runs, their steps, their logs, and webhook deliveries seen.

They derive from `kiln.ledger.tables.Table`, as schema.py's do;
migration 0004 creates them. Nothing here holds a secret value: log lines are masked before
they are written."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kiln.ledger.tables import Table


class CiRunRow(Table):
    """One pipeline run of one commit. `queue` is the key runs wait in line by (repository and
    ref): one runs at a time; a newer one supersedes the queued older ones."""

    __tablename__ = "ci_runs"
    __table_args__ = (Index("ix_ci_runs_queue_state", "queue", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(64), default="", server_default="")  # known once checked out
    repo: Mapped[str] = mapped_column(Text)  # path or URL the commit is checked out from
    spec: Mapped[str] = mapped_column(String(256))  # kiln.yaml's path inside the repository
    ref: Mapped[str] = mapped_column(String(256))  # refs/heads/main, refs/tags/v1, or a commit
    queue: Mapped[str] = mapped_column(Text)
    commit: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))  # cli, hook, github, gitlab
    state: Mapped[str] = mapped_column(String(16))  # queued, running, waiting, succeeded, failed, cancelled, superseded
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    image: Mapped[str] = mapped_column(String(128), default="", server_default="")
    worker: Mapped[str] = mapped_column(String(300), default="", server_default="")  # host:pid running it
    cancel: Mapped[bool] = mapped_column(default=False, server_default="0")  # `kiln ci cancel` asked
    created_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class CiStepRow(Table):
    __tablename__ = "ci_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ci_runs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order in the run (0: checkout and bake)
    stage: Mapped[int] = mapped_column(Integer)  # steps of one stage run in parallel
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))  # bake, run, deploy, promote, smoke
    state: Mapped[str] = mapped_column(String(16))  # pending, running, waiting, approved, succeeded, failed, skipped, cancelled
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class CiLogRow(Table):
    __tablename__ = "ci_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ci_runs.id"), index=True)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("ci_steps.id"), nullable=True)
    line: Mapped[str] = mapped_column(Text)  # masked
    at: Mapped[datetime] = mapped_column()


class CiDeliveryRow(Table):
    """A webhook delivery id seen once; the primary key refuses a replay atomically."""

    __tablename__ = "ci_deliveries"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)  # github, gitlab
    delivery: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_at: Mapped[datetime] = mapped_column()
