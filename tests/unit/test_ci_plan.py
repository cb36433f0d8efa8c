"""The pipeline section of kiln.yaml and the pure decisions of a run (kiln.ci.plan)."""

from __future__ import annotations

import pytest

from kiln.ci.plan import (
    branch_of,
    command_argv,
    plan,
    queue_key,
    skip_reason,
    tag_of,
)
from kiln.ci.trigger import pushed_refs
from kiln.errors import SpecError
from kiln.spec.loader import parse_spec
from kiln.spec.pipeline import Pipeline, Step, pipeline_problems

BASE = """
app: shop
build: {steps: [COPY app.py /app.py]}
services: {web: {port: 8000}}
environments: {production: {port: 8080}, staging: {port: 8081}}
"""


def spec_with(pipeline: str):
    return parse_spec(BASE + pipeline)


def test_a_full_pipeline_parses():
    spec = spec_with("""
pipeline:
  steps:
    - {name: test, run: pytest -q, environment: {TOKEN: "secret:api-token"}, services: {db: {packages: [redis-server], port: 6379}}}
    - parallel:
        - {run: [python3, -m, lint]}
        - {run: echo docs, branches: [main]}
    - deploy: staging
    - {smoke: staging, checks: [{path: /health, body: ok}]}
    - {promote: {from: staging, to: production, approval: manual}, branches: [main]}
""")
    steps = spec.pipeline.steps
    assert [s.kind for s in steps] == ["run", "parallel", "deploy", "smoke", "promote"]
    assert steps[0].services["db"].port == 6379
    assert steps[4].promote.source == "staging" and steps[4].promote.approval == "manual"
    assert steps[4].title == "promote staging → production"


@pytest.mark.parametrize("step, problem", [
    ("{deploy: staging, run: x}", "give exactly one of run, deploy, promote, smoke, parallel (got run, deploy)"),
    ("{name: nothing}", "give exactly one of"),
    ("{deploy: staging, environment: {A: b}}", "'environment' belongs to a run step"),
    ("{run: x, checks: [{path: /}]}", "'checks' belongs to a smoke step"),
    ("{parallel: [{parallel: [{run: x}]}]}", "parallel steps cannot be nested"),
    ("{run: x, environment: {A: 'secret:Bad Name'}}", "A: not a valid secret reference"),
    ("{promote: {to: production}}", "required key is missing"),
])
def test_wrong_steps_name_the_line_and_the_problem(step, problem):
    with pytest.raises(SpecError) as err:
        spec_with(f"pipeline:\n  steps:\n    - {step}\n")
    assert "kiln.yaml:8: pipeline.steps[0]" in str(err.value)
    assert problem in str(err.value)


def test_unknown_environments_are_problems_with_their_key_paths():
    pipeline = Pipeline.model_validate({"steps": [
        {"deploy": "qa"}, {"parallel": [{"smoke": "staging"}, {"smoke": "prod"}]},
        {"promote": {"from": "staging", "to": "live"}}]})
    found = list(pipeline_problems(pipeline, {"staging": 1, "production": 2}))
    assert [loc for loc, _ in found] == [("pipeline", "steps", 0, "deploy"),
                                         ("pipeline", "steps", 1, "parallel", 1, "smoke"),
                                         ("pipeline", "steps", 2, "promote", "to")]
    assert "no environment 'qa'; environments are: staging, production" in found[0][1]


def test_refs_branches_tags_and_queues():
    assert branch_of("refs/heads/release/1") == "release/1" and tag_of("refs/heads/main") is None
    assert tag_of("refs/tags/v1.2") == "v1.2" and branch_of("refs/tags/v1.2") is None
    assert queue_key("/srv/app.git", "refs/heads/main") != queue_key("/srv/app.git", "refs/heads/dev")


def test_branch_and_tag_filters():
    step = Step(deploy="production", branches=("main", "release/*"), tags=("v*",))
    assert skip_reason(step, "refs/heads/main") is None
    assert skip_reason(step, "refs/heads/release/2") is None
    assert skip_reason(step, "refs/tags/v3") is None
    assert skip_reason(step, "refs/heads/feature") == "only for branch main, branch release/*, tag v*"
    assert skip_reason(step, "0123abcd") == "only for branch main, branch release/*, tag v*"  # a bare commit is on no branch
    assert skip_reason(Step(deploy="staging"), "anything") is None


def test_plan_numbers_steps_and_groups_parallel_ones():
    pipeline = Pipeline.model_validate({"steps": [
        {"run": "test"},
        {"parallel": [{"run": "a"}, {"run": "b", "branches": ["main"]}]},
        {"deploy": "production", "tags": ["v*"]}]})
    stages = plan(pipeline, "refs/heads/dev")
    assert [[(p.position, p.stage, p.name, p.skip) for p in s] for s in stages] == [
        [(1, 1, "test", None)],
        [(2, 2, "a", None), (3, 2, "b", "only for branch main")],
        [(4, 3, "deploy production", "only for tag v*")]]


def test_a_parallel_groups_filter_applies_to_its_steps():
    pipeline = Pipeline.model_validate({"steps": [{"parallel": [{"run": "a"}], "branches": ["main"]}]})
    assert plan(pipeline, "refs/heads/dev")[0][0].skip == "only for branch main"


def test_commands_and_pushed_refs():
    assert command_argv("make test && echo ok") == ("sh", "-c", "make test && echo ok")
    assert command_argv(("pytest", "-q")) == ("pytest", "-q")
    zero = "0" * 40
    lines = f"{zero} {'a' * 40} refs/heads/main\n{'b' * 40} {zero} refs/heads/old\n{'c' * 40} {'d' * 40} refs/tags/v1\n"
    assert pushed_refs(lines) == [("refs/heads/main", "a" * 40), ("refs/tags/v1", "d" * 40)]
