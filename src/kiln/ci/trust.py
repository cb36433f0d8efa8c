"""Pipeline trust, the pure part: what a pushed commit's pipeline asks for, what a ref may do, and
which asks go beyond it. Where a ref's rights come from (a policy file, or the kiln.yaml of the
protected branch) is decided in ci/policy.py.

A pushed commit brings its own kiln.yaml, so nothing in it can widen what its ref may do. The
rights that matter are:

- `deploy`: environments the run may deploy its image to (and, since a deploy waits for no
  approval, promote to, with or without approval);
- `promote`: environments it may promote another environment's release to;
- `auto`: those of them it may promote to without `kiln ci approve` (`approval: auto`);
- `secrets`: names of the secrets its steps, sidecars and deployed environments may read;
- `app`: the app it may deploy or smoke-check (environments are the app's: renaming the app
  must not reach another app's environments);
- `setting`: what the environments it deploys or promotes to are given that weakens a default
  or picks where they listen and what runs them, each per environment: every hardening
  relaxation of a service (`read_only: false`, `no_new_privileges: false`, `user: root`,
  `cap_add: CAP`, `writable: PATH` beyond /tmp), and the environment's `port`, `preview_port`,
  `engine`, and a `bind` that is not loopback. Settings are named as kiln.yaml writes them
  (`cap_add: NET_RAW`, `port: 8081`, `engine: qemu`), so a refusal names the field and the right.

`asks(spec, pipeline, ref)` lists every one of these the pipeline uses for `ref` (its steps after
their branch and tag filters), each with the key of kiln.yaml that asks for it; `refusals` says,
in one sentence each, which of them `Rights` do not grant. Kiln's own secrets (the webhook
secrets) are refused to everyone, whatever grants them. Secret names are compared as the
variable they fall back to (`gitlab_token` and `gitlab.token` are `gitlab-token`:
KILN_SECRET_GITLAB_TOKEN), so no spelling reaches a secret another spelling was refused."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kiln.ci.plan import branch_of, ref_matches, skip_reason, tag_of
from kiln.git import is_commit
from kiln.secretref import env_var, reference
from kiln.spec.models import Spec
from kiln.spec.pipeline import Pipeline, Step
from kiln.spec.resolve import EnvConfig, resolve

KINDS = ("app", "deploy", "promote", "auto", "secret", "setting")


@dataclass(frozen=True)
class Ask:
    kind: str  # one of KINDS
    name: str  # the environment, secret or app; a setting as kiln.yaml writes it (`port: 8081`)
    where: str  # the key of kiln.yaml asking for it, e.g. pipeline.steps[2].promote.to
    env: str | None = None  # a setting's environment


Setting = tuple[str, str | None]  # (`port: 8081`, the environment it is granted for; None: any)


def same_secret(names: Iterable[str]) -> frozenset[str]:
    """`names` as the one variable each falls back to (secretref.env_var): the form to compare."""
    return frozenset(env_var(name) for name in names)


@dataclass(frozen=True)
class Rights:
    """What a ref may do. Deploying to an environment covers promoting to it, with or without
    approval (a deploy waits for none); `auto` promotions must also be `promote` ones."""

    deploy: frozenset[str] = frozenset()
    promote: frozenset[str] = frozenset()
    auto: frozenset[str] = frozenset()  # promotions that may skip `kiln ci approve`
    secrets: frozenset[str] = frozenset()
    app: str | None = None  # the app whose environments these are (None: any)
    settings: frozenset[Setting] = frozenset()

    def allows(self, ask: Ask) -> bool:
        if ask.kind == "deploy":
            return ask.name in self.deploy
        if ask.kind == "promote":
            return ask.name in self.promote or ask.name in self.deploy
        if ask.kind == "auto":
            return ask.name in self.auto or ask.name in self.deploy
        if ask.kind == "secret":
            return env_var(ask.name) in same_secret(self.secrets)
        if ask.kind == "app":
            return self.app is None or ask.name == self.app
        if ask.kind == "setting":
            return (ask.name, ask.env) in self.settings or (ask.name, None) in self.settings
        raise ValueError(f"unknown kind of right {ask.kind!r}")

    def settings_for(self, env: str | None) -> list[str]:
        """The settings granted in `env` (None: in every environment), sorted."""
        return sorted({name for name, where in self.settings if where is None or where == env})

    def summary(self) -> dict[str, object]:
        by_env: dict[str, list[str]] = {}
        for name, env in sorted(self.settings, key=lambda s: (s[1] or "", s[0])):
            by_env.setdefault(env or "*", []).append(name)
        return {"app": self.app, "deploy": sorted(self.deploy), "promote": sorted(self.promote | self.deploy),
                "auto_approval": sorted(self.auto | self.deploy), "secrets": sorted(self.secrets),
                "settings": by_env}

    def lines(self) -> list[str]:
        """What `kiln ci policy show` prints."""
        def names(values: Iterable[str]) -> str:
            return ", ".join(sorted(values)) or "none"
        return [f"may deploy to: {names(self.deploy)}",
                f"may promote to: {names(self.promote | self.deploy)}",
                f"may promote without approval to: {names(self.auto | self.deploy)}",
                f"may read secrets: {names(self.secrets)}",
                *[f"may set{' in ' + env if env else ''}: {', '.join(self.settings_for(env))}"
                  for env in sorted({e for _, e in self.settings}, key=lambda e: e or "")],
                ] + ([f"app: {self.app}"] if self.app else [])


def rights_of(asked: Iterable[Ask], app: str | None) -> Rights:
    """Rights that grant exactly `asked` (the protected branch's pipeline, planned for a ref)."""
    by: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for ask in asked:
        by[ask.kind].add(ask.name)
    return Rights(deploy=frozenset(by["deploy"]), promote=frozenset(by["promote"]), auto=frozenset(by["auto"]),
                  secrets=frozenset(by["secret"]), app=app,
                  settings=frozenset((a.name, a.env) for a in asked if a.kind == "setting"))


def _inner_steps(pipeline: Pipeline, ref: str) -> Iterator[tuple[str, Step]]:
    """(key path, step) of every step that runs for `ref` (as ci/plan.plan decides)."""
    for i, step in enumerate(pipeline.steps):
        if skip_reason(step, ref):
            continue
        group = [(f"pipeline.steps[{i}]", step)] if step.parallel is None else \
            [(f"pipeline.steps[{i}].parallel[{j}]", inner) for j, inner in enumerate(step.parallel)]
        for where, inner in group:
            if not skip_reason(inner, ref):
                yield where, inner


def asks(spec: Spec, pipeline: Pipeline, ref: str) -> list[Ask]:
    """Every right the pipeline uses for `ref`: its deploy and promote targets, its promotions
    without approval, the secrets of its run steps and sidecars, the secrets and settings of the
    environments it deploys or promotes to (as this spec resolves them: their services'
    environment, which hooks get too; their hardening relaxations, ports, bind and engine), and
    the app, when it touches or smoke-checks an environment."""
    out: list[Ask] = []
    touched: dict[str, str] = {}  # environment -> where it is first deployed or promoted to
    checked = False  # a smoke step reads an environment of the app
    for where, step in _inner_steps(pipeline, ref):
        checked = checked or step.smoke is not None
        if step.deploy is not None:
            out.append(Ask("deploy", step.deploy, f"{where}.deploy"))
            touched.setdefault(step.deploy, f"{where}.deploy")
        if step.promote is not None:
            out.append(Ask("promote", step.promote.to, f"{where}.promote.to"))
            if step.promote.approval == "auto":
                out.append(Ask("auto", step.promote.to, f"{where}.promote.approval"))
            touched.setdefault(step.promote.to, f"{where}.promote.to")
        out += _secrets(step.environment, f"{where}.environment")
        for alias, sidecar in step.services.items():
            out += _secrets(sidecar.environment, f"{where}.services.{alias}.environment")
    for env in touched:
        cfg = resolve(spec, env)
        for svc in cfg.services:
            out += _secrets(svc.environment, f"services.{svc.name}.environment", f" in {env}")
        out += settings_asked(cfg)
    if touched or checked:
        out.insert(0, Ask("app", spec.app, "app"))
    return out


LOOPBACK = ("127.", "::1")  # a bind to one of these reaches this host only: no right needed


def settings_asked(cfg: EnvConfig) -> list[Ask]:
    """What environment `cfg` is given that a pushed kiln.yaml needs a right for: its engine and
    ports always (a port can take another program's, an engine decides what kiln runs as root),
    a bind beyond loopback, and each hardening relaxation of each service."""
    env, key = cfg.env, f"environments.{cfg.env}"
    out = [Ask("setting", f"engine: {cfg.engine}", f"{key}.engine", env),
           Ask("setting", f"port: {cfg.port}", f"{key}.port", env)]
    if cfg.preview_port is not None:
        out.append(Ask("setting", f"preview_port: {cfg.preview_port}", f"{key}.preview_port", env))
    if not cfg.bind.startswith(LOOPBACK):
        out.append(Ask("setting", f"bind: {cfg.bind}", f"{key}.bind", env))
    for svc in cfg.services:
        out += [Ask("setting", said, f"services.{svc.name}.{field}", env) for field, said in svc.relaxed()]
    return out


def _secrets(environment: dict[str, str], where: str, suffix: str = "") -> list[Ask]:
    return [Ask("secret", name, f"{where}.{key}{suffix}") for key, value in environment.items()
            if (name := reference(value)) is not None]


def secret_names(asked: Iterable[Ask]) -> set[str]:
    return {a.name for a in asked if a.kind == "secret"}


def who(ref: str) -> str:
    """A ref as a person says it: branch main, tag v1.2, commit 1a2b3c4d5e6f."""
    if (branch := branch_of(ref)) is not None:
        return f"branch {branch}"
    if (tag := tag_of(ref)) is not None:
        return f"tag {tag}"
    return f"commit {ref[:12]}" if is_commit(ref) else ref


def refusals(asked: Iterable[Ask], rights: Rights | None, kiln_secrets: Iterable[str], ref_name: str,
             source: str) -> list[str]:
    """One sentence per right `asked` goes beyond: not in `rights` (None: a ref trusted as is,
    which may do whatever it asks) or one of `kiln_secrets` (never any pipeline's). One per
    (kind, name), naming the first key asking for it; the settings of an environment the run may
    not reach at all are left out, its refused deploy or promotion says enough. Empty: the run
    may go ahead."""
    asked = list(asked)
    own = same_secret(kiln_secrets)
    unreachable = set() if rights is None else \
        {a.name for a in asked if a.kind in ("deploy", "promote") and not rights.allows(a)}
    out, seen = [], set()
    for ask in asked:
        if (ask.kind, ask.name, ask.env) in seen or (ask.kind == "setting" and ask.env in unreachable):
            continue
        if ask.kind == "secret" and env_var(ask.name) in own:
            seen.add((ask.kind, ask.name, ask.env))
            out.append(f"{ref_name} may not read secret {ask.name} ({ask.where}): it is one of kiln's own "
                       "(a webhook secret), never given to a pipeline")
            continue
        if rights is None or rights.allows(ask):
            continue
        seen.add((ask.kind, ask.name, ask.env))
        out.append(_refusal(ask, rights, ref_name, source))
    return out


def _refusal(ask: Ask, rights: Rights, ref_name: str, source: str) -> str:
    def only(values: Iterable[str], what: str, none: str) -> str:
        names = sorted(values)
        return f"{source} allows {what} {', '.join(names)} only" if names else f"{source} allows {none}"

    if ask.kind == "deploy":
        return f"{ref_name} may not deploy to {ask.name} ({ask.where}): " + only(rights.deploy, "deploys to", "no deploy")
    if ask.kind == "promote":
        return (f"{ref_name} may not promote to {ask.name} ({ask.where}): "
                + only(rights.promote | rights.deploy, "promotions to", "no promotion"))
    if ask.kind == "auto":
        return (f"{ref_name} may not promote to {ask.name} with `approval: auto` ({ask.where}): {source} "
                f"requires `kiln ci approve` for it")
    if ask.kind == "secret":
        return f"{ref_name} may not read secret {ask.name} ({ask.where}): " + only(rights.secrets, "secrets", "no secret")
    if ask.kind == "setting":
        field = ask.name.partition(":")[0]
        granted = [s for s in rights.settings_for(ask.env) if s.partition(":")[0] == field]
        return (f"{ref_name} may not set `{ask.name}` in {ask.env} ({ask.where}): "
                + (f"{source} allows {', '.join(granted)} only there" if granted
                   else f"{source} allows no {field} setting there"))
    return f"{ref_name} may not deploy app {ask.name} ({ask.where}): {source} is for app {rights.app}"


# --- the policy file's rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule of a policy file: the refs it is for (glob patterns, as pipeline filters) and
    what they may do."""

    branches: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rights: Rights = field(default_factory=Rights)

    def matches(self, ref: str) -> bool:
        return ref_matches(ref, self.branches, self.tags)

    @property
    def title(self) -> str:
        return ", ".join([f"branches {' '.join(self.branches)}"] * bool(self.branches)
                         + [f"tags {' '.join(self.tags)}"] * bool(self.tags))


def first_rule(rules: Iterable[Rule], ref: str) -> tuple[int, Rule] | None:
    """The first rule (1-based number, rule) whose patterns match `ref`."""
    return next(((n, rule) for n, rule in enumerate(rules, start=1) if rule.matches(ref)), None)
