"""What a run does, decided from the pipeline and the ref alone. Pure."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from kiln.spec.pipeline import Pipeline, Step

# The one verdict on a smoke check's answer lives in spec/smoke.py; named here for ci/steps.py.
from kiln.spec.smoke import check_problem as check_problem

HEADS, TAGS = "refs/heads/", "refs/tags/"


def branch_of(ref: str) -> str | None:
    return ref[len(HEADS):] if ref.startswith(HEADS) else None


def tag_of(ref: str) -> str | None:
    return ref[len(TAGS):] if ref.startswith(TAGS) else None


def queue_key(repo: str, ref: str) -> str:
    """Runs of one repository and ref wait in one line (one runs at a time)."""
    return f"{repo}#{ref}"


def ref_matches(ref: str, branches: tuple[str, ...], tags: tuple[str, ...]) -> bool:
    """Whether `ref` is a branch matching one of the glob patterns `branches`, or a tag matching one of `tags`."""
    branch, tag = branch_of(ref), tag_of(ref)
    return (branch is not None and any(fnmatch.fnmatchcase(branch, p) for p in branches)) or \
        (tag is not None and any(fnmatch.fnmatchcase(tag, p) for p in tags))


def skip_reason(step: Step, ref: str) -> str | None:
    """Why `step` does not run for `ref` (None: it runs)."""
    if not step.branches and not step.tags or ref_matches(ref, step.branches, step.tags):
        return None
    wanted = [f"branch {p}" for p in step.branches] + [f"tag {p}" for p in step.tags]
    return f"only for {', '.join(wanted)}"


@dataclass(frozen=True)
class Planned:
    position: int  # 1, 2, … (0 is the checkout and bake)
    stage: int  # steps with the same stage run at the same time
    step: Step
    skip: str | None  # why it does not run for this ref

    @property
    def name(self) -> str:
        return self.step.title


def plan(pipeline: Pipeline, ref: str) -> list[list[Planned]]:
    """The stages of a run, in order; a parallel group is one stage."""
    stages: list[list[Planned]] = []
    position = 0
    for number, step in enumerate(pipeline.steps, start=1):
        group = step.parallel if step.parallel is not None else (step,)
        outer = skip_reason(step, ref)
        stage = []
        for inner in group:
            position += 1
            stage.append(Planned(position, number, inner, outer or skip_reason(inner, ref)))
        stages.append(stage)
    return stages


def command_argv(command: str | tuple[str, ...]) -> tuple[str, ...]:
    """A step's command as argv: a string runs with `sh -c`."""
    return ("sh", "-c", command) if isinstance(command, str) else tuple(command)
