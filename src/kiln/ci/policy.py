"""Pipeline trust, where a ref's rights come from (the comparison itself is ci/trust.py, pure).

Never from the pushed commit. In order:

1. a policy file on the server: `--policy FILE` (of `kiln ci run`, `kiln serve`, `kiln ci hook
   install`), else KILN_CI_POLICY, else KILN_HOME/ci-policy.yaml when it exists. Its `refs` rules
   say what each ref may do; the first rule matching a ref applies, and a ref no rule matches may
   do nothing (it may still run steps that read no secret).
2. else the kiln.yaml of the protected branch (the policy file's `protected_branch`, else the
   repository's default branch: git.default_branch), read with git at that branch's tip in the
   repository runs check out from: a ref may do what that pipeline does for it. A run of the
   protected branch itself is trusted as is (its own kiln.yaml is the policy).

A run's ref counts only when its commit is on it in the repository (git.on_ref): a webhook may
name any ref, so a commit that is not on the ref it came with has only the rights of a bare
commit. Kiln's own secrets (KILN_SECRETS, the names `kiln serve` verified webhooks with, the
policy file's `kiln_secrets`) are refused to every pipeline, whatever grants them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from kiln import git
from kiln.ci.plan import HEADS
from kiln.ci.trust import Ask, Rights, Rule, asks, first_rule, refusals, rights_of, same_secret, who
from kiln.engines import DEFAULT_ENGINE, NAMES
from kiln.errors import KilnError, PipelineError
from kiln.private import write_private
from kiln.secretref import NAME, env_var
from kiln.settings import Settings
from kiln.spec.loader import MAX_BYTES, parse_spec
from kiln.spec.models import Capability, IpLiteral, Model

POLICY_FILE = "ci-policy.yaml"  # in KILN_HOME
WEBHOOK_SECRETS = "webhook-secrets"  # in KILN_HOME: names of the secrets `kiln serve` verifies webhooks with
KILN_SECRETS = frozenset({"webhook", "gitlab-token"})  # kiln serve's default names for them


# --- the policy file -----------------------------------------------------------------------------


class RuleModel(Model):
    branches: tuple[str, ...] = Field((), description="branch patterns (globs, as pipeline filters)")
    tags: tuple[str, ...] = Field((), description="tag patterns")
    deploy: tuple[str, ...] = Field((), description="environments these refs may deploy to (and promote to)")
    promote: tuple[str, ...] = Field((), description="environments they may promote to")
    auto_approval: tuple[str, ...] = Field((), description="promotions that may skip `kiln ci approve`")
    secrets: tuple[str, ...] = Field((), description="secrets their steps, sidecars and environments may read")
    # The settings of the environments these refs deploy or promote to (ci/trust.settings_asked).
    ports: tuple[Port, ...] = Field((), description="ports (and preview ports) their environments may listen on: "
                                    "numbers or ranges such as '8000-8099'")
    engines: tuple[EngineName, ...] = Field((DEFAULT_ENGINE,), description="engines their environments may use")
    binds: tuple[IpLiteral, ...] = Field((), description="addresses beyond loopback their routers may listen on")
    cap_add: tuple[Capability, ...] = Field((), description="capabilities their services may keep")
    writable: tuple[str, ...] = Field((), description="tmpfs paths beyond /tmp their services may have")
    relax: tuple[Literal["read_only", "no_new_privileges", "user_root"], ...] = Field(
        (), description="defaults their services may turn off: a read-only root, no-new-privileges, not root")

    @model_validator(mode="after")
    def _check(self) -> RuleModel:
        if not self.branches and not self.tags:
            raise ValueError("a rule names the refs it is for: give branches, tags or both")
        if loose := sorted(set(self.auto_approval) - set(self.promote) - set(self.deploy)):
            raise ValueError(f"auto_approval names {', '.join(loose)}, which the rule lets neither deploy nor promote")
        if bad := [s for s in self.secrets if not NAME.match(s)]:
            raise ValueError(f"{bad[0]!r} is not a secret name")
        return self

    def rule(self, app: str | None) -> Rule:
        return Rule(self.branches, self.tags, Rights(frozenset(self.deploy), frozenset(self.promote),
                                                     frozenset(self.auto_approval), frozenset(self.secrets), app,
                                                     frozenset((said, None) for said in self._settings())))

    def _settings(self) -> Iterator[str]:
        """The settings granted, as ci/trust.settings_asked names them."""
        for low, high in self.ports:
            for port in range(low, high + 1):
                yield f"port: {port}"
                yield f"preview_port: {port}"
        yield from (f"engine: {engine}" for engine in self.engines)
        yield from (f"bind: {address}" for address in self.binds)
        yield from (f"cap_add: {cap}" for cap in self.cap_add)
        yield from (f"writable: {path}" for path in self.writable)
        yield from (RELAX[name] for name in self.relax)


RELAX = {"read_only": "read_only: false", "no_new_privileges": "no_new_privileges: false", "user_root": "user: root"}


def _port_range(value: object) -> tuple[int, int]:
    """A port (8080) or an inclusive range ('8000-8099') as (low, high)."""
    low, _, high = str(value).partition("-") if not isinstance(value, bool) else ("", "", "")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"{value!r} is not a port or a range of ports such as 8000-8099") from None
    if not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise ValueError(f"{value!r} is not a port or a range of ports within 1-65535")
    return bounds


def _engine_name(value: object) -> str:
    if value not in NAMES:
        raise ValueError(f"{value!r} is not an engine; engines: {', '.join(NAMES)}")
    return str(value)


Port = Annotated[tuple[int, int], BeforeValidator(_port_range)]
EngineName = Annotated[str, BeforeValidator(_engine_name)]


class PolicyFile(Model):
    app: str | None = Field(None, description="the app runs may deploy (default: any)")
    protected_branch: str | None = Field(None, description="without refs: the branch whose kiln.yaml is the policy")
    kiln_secrets: tuple[str, ...] = Field((), description="more secrets only kiln reads (besides webhook, gitlab-token)")
    refs: tuple[RuleModel, ...] | None = Field(None, description="rules, the first matching a ref applies")

    @model_validator(mode="after")
    def _check(self) -> PolicyFile:
        if self.refs is not None and self.protected_branch is not None:
            raise ValueError("give refs (the policy itself) or protected_branch (whose kiln.yaml is the policy), "
                             "not both")
        if self.protected_branch is not None and not git.is_ref(HEADS + self.protected_branch):
            raise ValueError(f"protected_branch {self.protected_branch!r} is not a branch name")
        return self


@dataclass(frozen=True)
class LoadedPolicy:
    path: Path
    policy: PolicyFile

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r.rule(self.policy.app) for r in self.policy.refs or ())


def policy_path(settings: Settings) -> Path | None:
    """The policy file in force: KILN_CI_POLICY (or --policy), which must exist, else
    KILN_HOME/ci-policy.yaml if it exists."""
    if settings.ci_policy is not None:
        if not settings.ci_policy.is_file():
            raise PipelineError(f"the pipeline policy file {settings.ci_policy} does not exist.",
                                "Give an existing file (--policy, KILN_CI_POLICY), or none to use the kiln.yaml of "
                                "the protected branch.")
        return settings.ci_policy
    default = settings.home / POLICY_FILE
    return default if default.is_file() else None


def load_policy(settings: Settings) -> LoadedPolicy | None:
    path = policy_path(settings)
    if path is None:
        return None
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise PipelineError(f"the pipeline policy file {path} is larger than {MAX_BYTES // 1024} KiB.")
        data = YAML(typ="safe").load(raw.decode("utf-8", errors="replace"))
        return LoadedPolicy(path, PolicyFile.model_validate(data or {}))
    except OSError as exc:
        raise PipelineError(f"cannot read the pipeline policy file {path}: {exc.strerror}.") from None
    except YAMLError as exc:
        raise PipelineError(f"the pipeline policy file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise PipelineError(f"the pipeline policy file {path} is wrong: {problems}",
                            "docs/ci.md (Trust) describes it.") from None


def kiln_secrets(settings: Settings, loaded: LoadedPolicy | None) -> frozenset[str]:
    """Secrets only kiln reads: the webhook secrets (kiln serve's default names, and every name it
    was started with), and the policy file's `kiln_secrets`."""
    names = set(KILN_SECRETS)
    recorded = settings.home / WEBHOOK_SECRETS
    if recorded.is_file():
        names |= {line.strip() for line in recorded.read_text().splitlines() if line.strip()}
    if loaded is not None:
        names |= set(loaded.policy.kiln_secrets)
    return frozenset(names)


def record_webhook_secrets(settings: Settings, names: list[str]) -> None:
    """`kiln serve` remembers the secrets it verifies webhooks with, so that no pipeline reads them."""
    path = settings.home / WEBHOOK_SECRETS
    known = set(path.read_text().split()) if path.is_file() else set()
    if not set(names) <= known:
        write_private(path, "".join(f"{n}\n" for n in sorted(known | set(names))).encode())


# --- a run's trust -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """What a run of `ref` at a commit may do, and where that was decided."""

    ref: str  # the ref its rights are for: the run's, or its commit when the commit is not on it
    name: str  # as a person says it: branch feature/x
    source: str  # "the policy from main (kiln.yaml at 1a2b3c4d5e6f)", "the policy file …", …
    rights: Rights | None  # None: trusted as is (a run of the protected branch)
    kiln_secrets: frozenset[str]
    notes: tuple[str, ...] = ()  # how the source was chosen; why a ref is not trusted as named

    def refusals(self, asked: list[Ask]) -> list[str]:
        return refusals(asked, self.rights, self.kiln_secrets, self.name, self.source)

    def may_read(self, asked: list[Ask]) -> set[str]:
        """The secrets a run asking for `asked` gets (after `refusals` found nothing)."""
        own, granted = same_secret(self.kiln_secrets), same_secret(self.rights.secrets if self.rights else ())
        return {a.name for a in asked if a.kind == "secret" and env_var(a.name) not in own
                and (self.rights is None or env_var(a.name) in granted)}

    def headline(self) -> str:
        if self.rights is None:
            return f"{self.name} is trusted as is: {self.source}"
        return f"{self.name} may do what {self.source} grants it"

    def lines(self) -> list[str]:
        out = [self.headline(), *self.notes]
        if self.rights is not None:
            out += self.rights.lines()
        out.append(f"never readable (kiln's own): {', '.join(sorted(self.kiln_secrets))}")
        return out

    def summary(self) -> dict[str, object]:
        return {"ref": self.ref, "name": self.name, "source": self.source, "trusted_as_is": self.rights is None,
                "rights": None if self.rights is None else self.rights.summary(),
                "kiln_secrets": sorted(self.kiln_secrets), "notes": list(self.notes)}


def trust_for(settings: Settings, repo: str, spec: str, ref: str, commit: str) -> Trust:
    """The trust of a run of `ref` at `commit`, from the repository `repo` (whose kiln.yaml is at
    `spec` in it). Reads the policy file and git; never the pushed commit's kiln.yaml."""
    loaded = load_policy(settings)
    own = kiln_secrets(settings, loaded)
    notes: list[str] = []
    effective = ref
    if not git.on_ref(repo, ref, commit):
        effective = commit
        if git.is_ref(ref):
            notes.append(f"{commit[:12]} is not on {ref} in {repo}, so it has only the rights of a bare commit")
    name = who(effective)

    if loaded is not None and loaded.policy.refs is not None:
        found = first_rule(loaded.rules, effective)
        if found is None:
            return Trust(effective, name, f"the policy file {loaded.path} (no rule for {name})",
                         Rights(app=loaded.policy.app), own, tuple(notes))
        number, rule = found
        return Trust(effective, name, f"the policy file {loaded.path} (rule {number}: {rule.title})", rule.rights,
                     own, tuple(notes))

    if loaded is not None and loaded.policy.protected_branch is not None:
        branch: str | None = loaded.policy.protected_branch
        how = f"set in {loaded.path}"
    else:
        branch, how = git.default_branch(repo)
    if branch is None:
        notes.append("set the protected branch with protected_branch in KILN_HOME/ci-policy.yaml (docs/ci.md)")
        return Trust(effective, name, f"no protected branch ({how}), so nothing is granted", Rights(), own,
                     tuple(notes))
    protected = HEADS + branch
    notes.insert(0, f"the protected branch is {branch} ({how})")
    if effective == protected:
        return Trust(effective, name, f"its own kiln.yaml (the protected branch {branch})", None, own, tuple(notes))
    tip = git.tip(repo, protected)
    if tip is None:
        notes.append(f"make {branch} exist, or name another with protected_branch in KILN_HOME/ci-policy.yaml")
        return Trust(effective, name, f"the policy from {branch}, which {repo} does not have (yet), so nothing "
                     "is granted", Rights(), own, tuple(notes))
    where = f"{spec} at {tip[:12]}"
    try:
        text = git.show(repo, tip, spec, MAX_BYTES)
        if text is None:
            return Trust(effective, name, f"the policy from {branch} ({where} does not exist, so nothing is granted)",
                         Rights(), own, tuple(notes))
        trusted = parse_spec(text, f"{branch}:{spec}")
    except KilnError as exc:
        return Trust(effective, name, f"the policy from {branch} ({where} cannot be read, so nothing is granted: "
                     f"{exc.message})", Rights(), own, tuple(notes))
    if trusted.pipeline is None:
        return Trust(effective, name, f"the policy from {branch} ({where} has no pipeline, so nothing is granted)",
                     Rights(app=trusted.app), own, tuple(notes))
    rights = rights_of(asks(trusted, trusted.pipeline, effective), trusted.app)
    return Trust(effective, name, f"the policy from {branch} ({where})", rights, own, tuple(notes))
