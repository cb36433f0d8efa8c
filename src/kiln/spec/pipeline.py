"""The `pipeline` section of kiln.yaml: what `kiln ci run` does with each commit.

Imports nothing of spec/models.py (which imports this module for its `pipeline` field). A smoke
step's `Check` is spec/smoke.py's, shared with the rollout's smoke checks."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln.secretref import Environ
from kiln.spec.durations import Duration
from kiln.spec.hardening import Hardening
from kiln.spec.smoke import Check


class StepKind(StrEnum):
    """What a pipeline step does. The value is its key in kiln.yaml, and what a run's step row
    records (ci_steps.kind), with `bake` for the checkout-and-bake step every run starts with."""

    BAKE = "bake"
    RUN = "run"
    DEPLOY = "deploy"
    PROMOTE = "promote"
    SMOKE = "smoke"
    PARALLEL = "parallel"  # a group; its steps are recorded, never itself


KINDS = ("run", "deploy", "promote", "smoke", "parallel")  # a step's keys, exactly one of which it gives
RUN_ONLY = ("environment", "services", "timeout")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Promote(_Model):
    """Put the exact image one environment runs into another (with the target's own config)."""

    source: str = Field(..., alias="from", description="environment whose release is promoted")
    to: str = Field(..., description="environment that receives it")
    approval: Literal["manual", "auto"] = Field("manual", description="`manual`: the run waits for `kiln ci approve RUN`; `auto`: at once")


class Sidecar(_Model):
    """A container started beside a `run` step on a network that exists only for that step
    (e.g. a database); the step reaches it by its name."""

    packages: tuple[str, ...] = Field((), description="Debian packages of a base image kiln bakes for it; none: the app image")
    command: str | tuple[str, ...] | None = Field(None, description="what it runs; a string runs with `sh -c`")
    environment: Environ = Field(default_factory=dict, description="environment variables; `secret:NAME` refers to a stored secret")
    port: int | None = Field(None, ge=1, le=65535, description="the step starts once this port accepts TCP connections")
    ready_timeout: Duration = Field(60.0, description="how long the port may take to open")
    read_only: bool = Field(True, description="read-only root filesystem, as for instances; list the paths it writes in `writable`, or set false")
    writable: tuple[str, ...] = Field(("/tmp",), description="paths mounted writable (tmpfs) on a read-only root")

    @property
    def hardening(self) -> Hardening:
        return Hardening(read_only=self.read_only, writable=self.writable)


class Step(_Model):
    """One step: exactly one of `run`, `deploy`, `promote`, `smoke` or `parallel`. A failing step
    stops the run; nothing after it runs (or deploys)."""

    name: str | None = Field(None, description="shown in `kiln ci show`; default: made from the step")
    run: str | tuple[str, ...] | None = Field(None, description="command run in a throwaway container of the freshly baked image; a string runs with `sh -c`")
    deploy: str | None = Field(None, description="environment to deploy the baked image to (the rollout of its spec)")
    promote: Promote | None = Field(None, description="environment-to-environment promotion (see pipeline.steps[].promote)")
    smoke: str | None = Field(None, description="environment whose public URL gets the `checks`")
    parallel: tuple[Step, ...] | None = Field(None, description="steps run at the same time (no nesting)")
    checks: tuple[Check, ...] = Field((Check(),), description="smoke: the requests that must pass")
    environment: Environ = Field(default_factory=dict, description="run: environment variables; `secret:NAME` refers to a secret from `kiln secret set` (masked in every log)")
    services: dict[str, Sidecar] = Field(default_factory=dict, description="run: sidecar containers by name (see pipeline.steps[].services.NAME)")
    timeout: Duration = Field(1800.0, description="run: longest time the command may take")
    read_only: bool = Field(True, description="run: read-only root filesystem, as for instances; list the paths the command writes in `writable`, or set false")
    writable: tuple[str, ...] = Field(("/tmp",), description="run: paths mounted writable (tmpfs) on a read-only root")
    branches: tuple[str, ...] = Field((), description="run only for pushes to these branches (glob patterns such as `main`, `release/*`)")
    tags: tuple[str, ...] = Field((), description="run only for these tags (glob patterns such as `v*`)")

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)}" + (f" (got {', '.join(kinds)})" if kinds else ""))
        if kinds[0] != "run" and (misplaced := [k for k in RUN_ONLY if k in self.model_fields_set]):
            raise ValueError(f"'{misplaced[0]}' belongs to a run step")
        if kinds[0] != "smoke" and "checks" in self.model_fields_set:
            raise ValueError("'checks' belongs to a smoke step")
        if self.parallel is not None and any(s.parallel is not None for s in self.parallel):
            raise ValueError("parallel steps cannot be nested")
        if self.run is not None and not self.run:
            raise ValueError("run needs a command")
        return self

    @property
    def hardening(self) -> Hardening:
        """A run step's container: as an instance's, with its own read-only root and writable paths."""
        return Hardening(read_only=self.read_only, writable=self.writable)

    @property
    def kind(self) -> StepKind:
        return StepKind(next(k for k in KINDS if getattr(self, k) is not None))

    @property
    def title(self) -> str:
        if self.name:
            return self.name
        if self.run is not None:
            text = self.run if isinstance(self.run, str) else " ".join(self.run)
            return text if len(text) <= 40 else text[:39] + "…"
        if self.promote is not None:
            return f"promote {self.promote.source} → {self.promote.to}"
        if self.parallel is not None:
            return "parallel"
        return f"{self.kind} {self.deploy or self.smoke}"


class Pipeline(_Model):
    """What `kiln ci run` does with a commit after it is baked: its steps, in order."""

    steps: tuple[Step, ...] = Field(..., min_length=1, description="the steps, in order (see pipeline.steps[])")


def pipeline_problems(pipeline: Pipeline, environments: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Names of environments a pipeline uses that the spec does not declare (key path, problem)."""
    known = ", ".join(environments)
    for i, step in enumerate(pipeline.steps):
        for j, inner in ([(None, step)] if step.parallel is None else list(enumerate(step.parallel))):
            base: tuple[str | int, ...] = ("pipeline", "steps", i) + (("parallel", j) if j is not None else ())
            used: list[tuple[tuple[str, ...], str | None]] = [(("deploy",), inner.deploy), (("smoke",), inner.smoke)]
            if inner.promote is not None:
                used += [(("promote", "from"), inner.promote.source), (("promote", "to"), inner.promote.to)]
            for key, env in used:
                if env is not None and env not in environments:
                    yield base + key, f"no environment {env!r}; environments are: {known}"
