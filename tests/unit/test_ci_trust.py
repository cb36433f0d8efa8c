"""Pipeline trust, the pure part (kiln.ci.trust): what a pushed pipeline asks for, the rights the
protected branch's pipeline gives a ref, and a table of pushed pipelines that widen them or not.
The policy file's model (kiln.ci.policy) too."""

from __future__ import annotations

import pytest

from kiln.ci.policy import PolicyFile, RuleModel
from kiln.ci.trust import Ask, Rights, Rule, asks, first_rule, refusals, rights_of, who
from kiln.spec.loader import parse_spec

ENVS = """
app: shop
build: {steps: [COPY app.py /app.py]}
services: {web: {port: 8000, environment: {LOG: info}}}
environments:
  production: {port: 8080, services: {web: {environment: {DB: "secret:prod-db"}}}}
  staging: {port: 8081, services: {web: {environment: {DB: "secret:staging-db"}}}}
  qa: {port: 8082}
"""

TRUSTED = ENVS + """
pipeline:
  steps:
    - {name: test, run: pytest, environment: {DB: "secret:test-db"}}
    - {name: publish, run: publish, environment: {TOKEN: "secret:api-token"}, branches: [main]}
    - deploy: staging
    - {promote: {from: staging, to: production, approval: manual}, branches: [main, "release/*"]}
    - {promote: {from: staging, to: qa, approval: auto}}
"""
SOURCE = "the policy from main (kiln.yaml at 1a2b3c4d5e6f)"
KILN_OWN = frozenset({"webhook", "gitlab-token"})


def rights_for(ref: str, text: str = TRUSTED) -> Rights:
    spec = parse_spec(text)
    return rights_of(asks(spec, spec.pipeline, ref), spec.app)


def refused(pushed: str, ref: str = "refs/heads/feature/x", envs: str = ENVS) -> list[str]:
    spec = parse_spec(envs + pushed)
    return refusals(asks(spec, spec.pipeline, ref), rights_for(ref), KILN_OWN, who(ref), SOURCE)


def test_the_protected_pipeline_gives_each_ref_what_it_does_for_that_ref():
    assert rights_for("refs/heads/feature/x") == Rights(
        deploy=frozenset({"staging"}), promote=frozenset({"qa"}), auto=frozenset({"qa"}),
        secrets=frozenset({"test-db", "staging-db"}), app="shop",
        # the settings of the environments it deploys and promotes to, each for its environment
        settings=frozenset({("engine: docker", "staging"), ("port: 8081", "staging"),
                            ("engine: docker", "qa"), ("port: 8082", "qa")}))
    release = rights_for("refs/heads/release/2")
    assert release.promote == {"production", "qa"} and release.auto == {"qa"}
    assert release.secrets == {"test-db", "staging-db", "prod-db"}  # production's environment, as main's spec has it
    assert rights_for("refs/heads/main").secrets == {"test-db", "api-token", "staging-db", "prod-db"}
    # a bare commit (or a tag) gets what the unfiltered steps do
    assert rights_for("1" * 40) == rights_for("refs/tags/v1") == rights_for("refs/heads/feature/x")


def test_asks_name_the_key_that_asks():
    spec = parse_spec(ENVS + """
pipeline:
  steps:
    - {run: x, environment: {T: "secret:api-token"}, services: {db: {environment: {P: "secret:db-pw"}}}}
    - parallel:
        - {run: y}
        - deploy: production
    - {promote: {from: staging, to: qa, approval: auto}}
    - {deploy: staging, branches: [main]}
""")
    assert asks(spec, spec.pipeline, "refs/heads/dev") == [
        Ask("app", "shop", "app"),
        Ask("secret", "api-token", "pipeline.steps[0].environment.T"),
        Ask("secret", "db-pw", "pipeline.steps[0].services.db.environment.P"),
        Ask("deploy", "production", "pipeline.steps[1].parallel[1].deploy"),
        Ask("promote", "qa", "pipeline.steps[2].promote.to"),
        Ask("auto", "qa", "pipeline.steps[2].promote.approval"),
        Ask("secret", "prod-db", "services.web.environment.DB in production"),
        Ask("setting", "engine: docker", "environments.production.engine", "production"),
        Ask("setting", "port: 8080", "environments.production.port", "production"),
        Ask("setting", "engine: docker", "environments.qa.engine", "qa"),
        Ask("setting", "port: 8082", "environments.qa.port", "qa"),
    ]  # the staging deploy is for main only: not asked by dev


SAME = TRUSTED.removeprefix(ENVS)


@pytest.mark.parametrize("pushed, ref, expected", [
    # not wider: the same pipeline, less of it, narrower approvals, steps filtered away from this ref
    (SAME, "refs/heads/feature/x", []),
    ("pipeline: {steps: [{run: pytest}]}", "refs/heads/feature/x", []),
    ("pipeline: {steps: [{promote: {from: staging, to: qa, approval: manual}}]}", "refs/heads/feature/x", []),
    ("pipeline: {steps: [{promote: {from: production, to: staging, approval: auto}}]}", "refs/heads/feature/x", []),
    ("pipeline: {steps: [{deploy: production, branches: [main]}]}", "refs/heads/feature/x", []),
    ("pipeline: {steps: [{promote: {from: staging, to: production}}]}", "refs/heads/release/2", []),
    (SAME, "refs/heads/release/2", []),
    # wider
    ("pipeline: {steps: [{deploy: production}]}", "refs/heads/feature/x",
     ["branch feature/x may not deploy to production (pipeline.steps[0].deploy): "
      f"{SOURCE} allows deploys to staging only",
      "branch feature/x may not read secret prod-db (services.web.environment.DB in production): "
      f"{SOURCE} allows secrets staging-db, test-db only"]),
    ("pipeline: {steps: [{promote: {from: staging, to: production, approval: manual}}]}", "refs/heads/feature/x",
     [f"branch feature/x may not promote to production (pipeline.steps[0].promote.to): {SOURCE} allows promotions "
      "to qa, staging only",
      "branch feature/x may not read secret prod-db (services.web.environment.DB in production): "
      f"{SOURCE} allows secrets staging-db, test-db only"]),
    ("pipeline: {steps: [{promote: {from: staging, to: production, approval: auto}}]}", "refs/heads/release/2",
     ["branch release/2 may not promote to production with `approval: auto` (pipeline.steps[0].promote.approval): "
      f"{SOURCE} requires `kiln ci approve` for it"]),
    ("pipeline: {steps: [{run: 'echo $T | base64', environment: {T: 'secret:api-token'}}]}", "refs/heads/feature/x",
     ["branch feature/x may not read secret api-token (pipeline.steps[0].environment.T): "
      f"{SOURCE} allows secrets staging-db, test-db only"]),
    ("pipeline: {steps: [{run: x, services: {db: {environment: {P: 'secret:prod-db'}}}}]}", "refs/heads/feature/x",
     ["branch feature/x may not read secret prod-db (pipeline.steps[0].services.db.environment.P): "
      f"{SOURCE} allows secrets staging-db, test-db only"]),
    ("pipeline: {steps: [{run: x, environment: {H: 'secret:webhook'}}]}", "refs/heads/main",
     ["branch main may not read secret webhook (pipeline.steps[0].environment.H): it is one of kiln's own "
      "(a webhook secret), never given to a pipeline"]),
    ("pipeline: {steps: [{parallel: [{run: x}, {deploy: production}]}]}", "refs/tags/v1",
     [f"tag v1 may not deploy to production (pipeline.steps[0].parallel[1].deploy): {SOURCE} allows deploys to "
      "staging only",
      "tag v1 may not read secret prod-db (services.web.environment.DB in production): "
      f"{SOURCE} allows secrets staging-db, test-db only"]),
    # the filter that kept a secret to main, removed by the branch
    (SAME.replace(", branches: [main]}", "}"), "refs/heads/feature/x",
     ["branch feature/x may not read secret api-token (pipeline.steps[1].environment.TOKEN): "
      f"{SOURCE} allows secrets staging-db, test-db only"]),
    ("pipeline: {steps: [{deploy: staging}]}", "1" * 40, []),
])
def test_a_pushed_pipeline_is_refused_exactly_the_rights_it_widens(pushed, ref, expected):
    assert refused(pushed, ref) == expected


def test_a_pushed_spec_cannot_widen_through_its_environments_or_its_app():
    # the branch may deploy staging, but its staging now reads production's database password
    envs = ENVS.replace('staging: {port: 8081, services: {web: {environment: {DB: "secret:staging-db"}}}}',
                        'staging: {port: 8081, services: {web: {environment: {DB: "secret:prod-db"}}}}')
    assert refused("pipeline: {steps: [{deploy: staging}]}", envs=envs) == [
        "branch feature/x may not read secret prod-db (services.web.environment.DB in staging): "
        f"{SOURCE} allows secrets staging-db, test-db only"]
    # or the app is renamed, so that `staging` is another app's
    assert refused("pipeline: {steps: [{deploy: staging}]}", envs=ENVS.replace("app: shop", "app: bank")) == [
        f"branch feature/x may not deploy app bank (app): {SOURCE} is for app shop"]
    # renaming the app alone, deploying nothing, takes nothing
    assert refused("pipeline: {steps: [{run: x}]}", envs=ENVS.replace("app: shop", "app: bank")) == []


def test_a_ref_trusted_as_is_may_do_anything_but_read_kilns_own_secrets():
    spec = parse_spec(ENVS + "pipeline: {steps: [{deploy: production}, {run: x, environment: {A: 'secret:api-token', "
                             "G: 'secret:gitlab-token'}}]}")
    asked = asks(spec, spec.pipeline, "refs/heads/main")
    assert refusals(asked, None, KILN_OWN, "branch main", "its own kiln.yaml") == [
        "branch main may not read secret gitlab-token (pipeline.steps[1].environment.G): it is one of kiln's own "
        "(a webhook secret), never given to a pipeline"]
    assert refusals(asked, None, frozenset(), "branch main", "its own kiln.yaml") == []


def test_each_widened_right_is_named_once():
    spec = parse_spec(ENVS + "pipeline: {steps: [{deploy: production}, {deploy: production}, "
                             "{run: x, environment: {A: 'secret:x1', B: 'secret:x1'}}]}")
    out = refusals(asks(spec, spec.pipeline, "refs/heads/f"), Rights(), KILN_OWN, "branch f", "the policy")
    assert out == ["branch f may not deploy to production (pipeline.steps[0].deploy): the policy allows no deploy",
                   "branch f may not read secret x1 (pipeline.steps[2].environment.A): the policy allows no secret",
                   "branch f may not read secret prod-db (services.web.environment.DB in production): the policy "
                   "allows no secret"]


def test_rights_allow_and_say_what_they_allow():
    rights = Rights(deploy=frozenset({"staging"}), promote=frozenset({"production"}), app="shop")
    assert rights.allows(Ask("promote", "staging", "")) and rights.allows(Ask("auto", "staging", ""))  # a deploy right
    assert rights.allows(Ask("promote", "production", "")) and not rights.allows(Ask("auto", "production", ""))
    assert not rights.allows(Ask("app", "bank", "")) and Rights().allows(Ask("app", "bank", ""))
    assert rights.lines() == ["may deploy to: staging", "may promote to: production, staging",
                              "may promote without approval to: staging", "may read secrets: none", "app: shop"]
    assert who("refs/heads/a/b") == "branch a/b" and who("refs/tags/v1") == "tag v1"
    assert who("ab" * 20) == f"commit {'ab' * 6}" and who("HEAD") == "HEAD"


def test_policy_file_rules_first_match_wins_and_are_checked():
    policy = PolicyFile.model_validate({"app": "shop", "refs": [
        {"branches": ["main"], "deploy": ["staging", "production"], "secrets": ["api-token"]},
        {"branches": ["release/*"], "tags": ["v*"], "promote": ["production"], "auto_approval": ["production"]},
        {"branches": ["*"], "deploy": ["staging"]},
    ]})
    rules = [r.rule(policy.app) for r in policy.refs or ()]
    number, rule = first_rule(rules, "refs/heads/main")
    assert number == 1 and rule.rights.secrets == {"api-token"} and rule.rights.app == "shop"
    assert first_rule(rules, "refs/tags/v2")[0] == 2 and first_rule(rules, "refs/heads/release/1")[0] == 2
    assert first_rule(rules, "refs/heads/feature/x")[0] == 3
    assert first_rule(rules, "refs/tags/nightly") is None and first_rule(rules, "1" * 40) is None
    assert rules[1].title == "branches release/*, tags v*"
    assert Rule(("main",)).matches("refs/heads/main") and not Rule(("main",)).matches("refs/tags/main")


@pytest.mark.parametrize("data, problem", [
    ({"refs": [{"deploy": ["staging"]}]}, "a rule names the refs it is for"),
    ({"refs": [{"branches": ["*"], "auto_approval": ["production"]}]}, "auto_approval names production"),
    ({"refs": [{"branches": ["*"], "secrets": ["Bad Name"]}]}, "'Bad Name' is not a secret name"),
    ({"refs": [], "protected_branch": "main"}, "not both"),
    ({"protected_branch": "a..b"}, "is not a branch name"),
    ({"refs": [{"branches": ["*"], "deploy": "staging", "extra": 1}]}, "Extra inputs are not permitted"),
])
def test_policy_file_mistakes_are_refused(data, problem):
    with pytest.raises(ValueError, match=problem):
        PolicyFile.model_validate(data)
    # a rule that says nothing grants nothing but the default engine
    assert RuleModel.model_validate({"tags": ["v*"]}).rule(None).rights == Rights(
        settings=frozenset({("engine: docker", None)}))


# --- issue 25, item 6: secret names compare as the variable they fall back to -------------------

@pytest.mark.parametrize("spelling", ["gitlab_token", "gitlab.token", "gitlab-token"])
def test_kilns_own_secret_is_refused_under_every_spelling_of_its_variable(spelling):
    """`secret:gitlab_token` falls back to KILN_SECRET_GITLAB_TOKEN, gitlab-token's variable."""
    spec = parse_spec(ENVS + f"pipeline: {{steps: [{{run: x, environment: {{G: 'secret:{spelling}'}}}}]}}")
    asked = asks(spec, spec.pipeline, "refs/heads/main")
    for rights in (None, Rights(secrets=frozenset({spelling}))):  # trusted as is, or even granted by name
        assert refusals(asked, rights, KILN_OWN, "branch main", "x") == [
            f"branch main may not read secret {spelling} (pipeline.steps[0].environment.G): it is one of kiln's own "
            "(a webhook secret), never given to a pipeline"]


def test_a_granted_secret_is_the_same_under_every_spelling_and_may_read_gives_the_name_asked():
    from kiln.ci.policy import Trust

    spec = parse_spec(ENVS + "pipeline: {steps: [{run: x, environment: {A: 'secret:api_token', B: 'secret:gitlab.token'}}]}")
    asked = asks(spec, spec.pipeline, "refs/heads/f")
    trust = Trust("refs/heads/f", "branch f", "x", Rights(secrets=frozenset({"api-token"})), KILN_OWN)
    assert trust.refusals(asked) == ["branch f may not read secret gitlab.token (pipeline.steps[0].environment.B): "
                                     "it is one of kiln's own (a webhook secret), never given to a pipeline"]
    assert trust.may_read(asked) == {"api_token"}
    assert Trust("m", "branch main", "x", None, KILN_OWN).may_read(asked) == {"api_token"}
