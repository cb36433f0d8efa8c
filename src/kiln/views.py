"""What kiln shows: the typed values the use cases return and every front end renders.

The CLI's tables and `--json`, the API's answers (and their OpenAPI schemas, named after these
classes) and the dashboard's pages all take these values; each has one JSON form,
`to_json()` (pydantic's, by alias), so the three cannot drift apart. Times are the ledger's naive
UTC datetimes in Python and `2026-01-02T03:04:05.123456Z` in JSON (`utc`, the one place that
writes that form). A view of a ledger record is made by its class's `of`; ledger and engine types
are imported for typing only, so this module stays a leaf that everything may import.

Pure."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

# The stored vocabularies a view carries, for the front ends (which import nothing of the ledger).
from kiln.ledger.kinds import ActionState as ActionState
from kiln.ledger.kinds import RolloutState as RolloutState
from kiln.ledger.kinds import RunState as RunState
from kiln.ledger.kinds import StepState as StepState
from kiln.spec.pipeline import StepKind as StepKind

if TYPE_CHECKING:
    from kiln.access import Token as StoredToken
    from kiln.bake.vm import VmImage as StoredVmImage
    from kiln.ledger.ci_store import CiRun as StoredRun
    from kiln.ledger.ci_store import CiStep as StoredStep
    from kiln.ledger.environments import MadeEnv
    from kiln.ledger.events import Event as StoredEvent
    from kiln.ledger.releases import Release as StoredRelease
    from kiln.ledger.rollouts import Rollout as StoredRollout
    from kiln.ledger.samples import Sample as StoredSample
    from kiln.spec.envdiff import KeyDiff
    from kiln.usecases.deploy import Outcome as DeployOutcome
    from kiln.usecases.nodes import NodeRow


@overload
def utc(at: datetime, timespec: str = "auto") -> str: ...
@overload
def utc(at: None, timespec: str = "auto") -> None: ...
def utc(at: datetime | None, timespec: str = "auto") -> str | None:
    """The one JSON form of a time: ISO 8601 in UTC with a Z (the ledger keeps naive UTC)."""
    return None if at is None else at.isoformat(timespec=timespec) + "Z"


def _utc(at: datetime) -> str:
    return utc(at)


# A time: a datetime in Python, its `utc` form in JSON (and in the OpenAPI schema, a string).
Time = Annotated[datetime, PlainSerializer(_utc, return_type=str, when_used="json")]

ReleaseState = Literal["serving", "served", "aborted", "rolling out", "recorded"]


class View(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The value's one JSON form (what `--json` prints and the API answers)."""
        return self.model_dump(mode="json", by_alias=True)


# --- releases and rollouts ---------------------------------------------------------------------


class Release(View):
    """One release of an environment: its image and provenance."""

    number: int
    image: str
    commit: str | None
    created_at: Time
    dirty: bool
    inputs_hash: str
    note: str
    origin: str

    @classmethod
    def of(cls, r: StoredRelease) -> Release:
        return cls(number=r.number, image=r.image, commit=r.commit, created_at=r.created_at, dirty=r.dirty,
                   inputs_hash=r.inputs_hash, note=r.note, origin=r.origin)


class ReleaseEntry(Release):
    """A release in a list, with what became of it."""

    state: ReleaseState

    @classmethod
    def listed(cls, r: StoredRelease, state: ReleaseState) -> ReleaseEntry:
        return cls(**Release.of(r).model_dump(), state=state)


class ReleaseDetail(Release):
    """A release with the resolved config it records."""

    config: dict[str, Any]
    config_digest: str

    @classmethod
    def full(cls, r: StoredRelease) -> ReleaseDetail:
        return cls(**Release.of(r).model_dump(), config=r.config, config_digest=r.config_digest)


class ManifestRelease(ReleaseDetail):
    image_tag: str
    spec_digest: str


class Rollout(View):
    """The move of an environment from one release to another."""

    id: int
    from_release: int | None = Field(alias="from")
    to_release: int = Field(alias="to")
    strategy: str
    state: RolloutState
    phase: str
    reason: str
    started_at: Time
    finished_at: Time | None

    @classmethod
    def of(cls, r: StoredRollout) -> Rollout:
        return cls(id=r.id, from_release=r.from_release, to_release=r.to_release, strategy=r.strategy, state=r.state,
                   phase=r.phase, reason=r.reason, started_at=r.started_at, finished_at=r.finished_at)

    @property
    def seconds(self) -> float | None:
        """How long it took (None while it has not finished)."""
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


class Step(View):
    """One journalled action of a rollout; a finished one with `seconds` since its start."""

    action: str
    target: str
    state: ActionState
    detail: str
    at: Time
    seconds: float | None = None


class RolloutDetail(Rollout):
    steps: list[Step]


class Manifest(View):
    """A portable record of one release (`kiln release export`; `kiln release import` reads it)."""

    kiln_manifest: int
    app: str
    env: str
    exported_at: str
    release: ManifestRelease
    rollouts: list[Rollout]


class Difference(View):
    """One key of two resolved configs."""

    key: str
    a: Any
    b: Any


class KeyDifference(Difference):
    declared: bool  # an environment overlay sets this key

    @classmethod
    def of(cls, d: KeyDiff) -> KeyDifference:
        return cls(key=d.key, a=d.a, b=d.b, declared=d.declared)


class ImagePair(View):
    a: str | None
    b: str | None
    same: bool

    @classmethod
    def of(cls, a: str | None, b: str | None) -> ImagePair:
        return cls(a=a, b=b, same=a == b)


class ReleaseDiff(View):
    """Two releases of an environment: their images, and their configs key by key."""

    a: Release
    b: Release
    image: ImagePair
    differences: list[Difference]


# --- status ------------------------------------------------------------------------------------


class ServedRelease(View):
    number: int
    image: str
    commit: str | None
    created_at: Time


class RouterState(View):
    state: str  # running, exited…, absent
    name: str


class Waiting(View):
    """An unfinished rollout: running, or paused for promotion."""

    rollout: int
    release: int
    state: RolloutState
    phase: str


class Instance(View):
    id: str
    service: str
    release: int
    health: str  # healthy, idle (routed at weight 0), down, running, exited (N)…
    in_router: bool
    container: str
    node: str | None
    weight: int | None


class Limits(View):
    memory: int  # bytes
    cpus: float
    pids: int


class Halted(View):
    at: Time
    why: str


class AgentState(View):
    """Which agent watches an environment, and whether its meltdown guard halted self-healing."""

    leader: str | None
    healing: Literal["active", "halted"]
    halted: Halted | None


class Status(View):
    """What runs in an environment: the release in service, the router, each instance's health."""

    app: str
    env: str
    url: str
    release: ServedRelease | None
    preview_url: str | None
    engine: str
    router: RouterState
    waiting: list[Waiting]
    instances: list[Instance]
    relaxations: dict[str, list[str]]
    limits: dict[str, Limits]
    agent: AgentState


class Overview(View):
    """An environment at a glance (the dashboard's overview row): counts from its status."""

    app: str
    env: str
    error: str | None = None  # why its status could not be read
    status: Status | None = None
    health: dict[str, int] = {}  # instances by health
    nodes: dict[str, int] = {}  # instances by node ("this host" without one)
    drift: int = 0  # instances found tainted in the last day


class Taint(View):
    """A drifted instance and why (`kiln drift`)."""

    instance: str
    service: str
    release: int
    reasons: list[str]


# --- environments ------------------------------------------------------------------------------


class App(View):
    app: str
    environments: list[str]
    spec: bool  # whether `kiln serve` was given its kiln.yaml (actions need it)


class Environment(View):
    """An environment in a list: declared in kiln.yaml, or made by kiln (recreated, preview)."""

    env: str
    kind: str  # declared, recreated, preview
    url: str
    engine: str
    release: int | None
    image: str | None
    origin: str
    expires_at: Time | None
    instances: dict[str, int]  # replicas by service


class EnvironmentDetail(View):
    env: str
    config: dict[str, Any]
    config_digest: str
    release: Release | None
    declared: list[str]  # keys its overlay sets


class Pair(View):
    a: dict[str, Any]
    b: dict[str, Any]


class EnvDiff(View):
    """What two environments run, key by key; `match`: the same image and no difference an overlay
    does not declare."""

    a: str
    b: str
    match: bool
    image: ImagePair
    differences: list[KeyDifference]
    instances: Pair  # running instances by service
    relaxations: Pair  # hardening relaxations by service


class MadeEnvironment(View):
    app: str
    env: str
    kind: str
    port: int
    origin: str
    created_at: Time
    expires_at: Time | None

    @classmethod
    def of(cls, m: MadeEnv) -> MadeEnvironment:
        return cls(app=m.app, env=m.env, kind=m.kind, port=m.port, origin=m.origin, created_at=m.created_at,
                   expires_at=m.expires_at)


class Preview(MadeEnvironment):
    release: Release
    url: str
    seconds: float


# --- changes -----------------------------------------------------------------------------------


class Outcome(View):
    """What a deploy, rollback or promotion came to."""

    release: Release
    changed: bool
    state: RolloutState  # succeeded, or paused (a blue-green release waits for promotion)
    url: str
    preview_url: str | None

    @classmethod
    def fields_of(cls, o: DeployOutcome) -> dict[str, Any]:
        cfg = o.release.env_config()
        return {"release": Release.of(o.release), "changed": o.changed, "state": o.state, "url": cfg.url,
                "preview_url": cfg.preview_url}

    @classmethod
    def of(cls, o: DeployOutcome) -> Outcome:
        return cls(**cls.fields_of(o))


class Report(Outcome):
    """A change as the CLI reports it (`--json`): where, and how long it took."""

    app: str
    env: str
    seconds: float


class ActionOutcome(Outcome):
    """A change asked through `kiln serve`, with what the use case said."""

    said: list[str]


class AbortOutcome(Rollout):
    said: list[str]


# --- locks, events, traffic --------------------------------------------------------------------


class LockStatus(View):
    """Who holds an environment's lock, as read `at`; the holder's fields are None when nobody does."""

    app: str
    env: str
    locked: bool
    at: Time
    holder: str | None = None
    user: str | None = None
    host: str | None = None
    pid: int | None = None
    reason: str | None = None
    acquired_at: Time | None = None
    heartbeat_at: Time | None = None
    lease_seconds: float | None = None
    expired: bool = False
    seconds_left: float | None = None  # until the lease runs out (negative once it has)


class Event(View):
    """Something that happened to an app's environment (kinds: kiln.ledger.kinds)."""

    app: str
    id: int
    env: str
    kind: str
    message: str
    at: Time

    @classmethod
    def of(cls, e: StoredEvent) -> Event:
        return cls(app=e.app, id=e.id, env=e.env, kind=e.kind, message=e.message, at=e.at)


class Sample(View):
    """Traffic of one release over an interval ending `at`."""

    release: int
    at: Time
    seconds: float
    requests: int
    errors: int
    rps: float
    error_rate: float  # 0..1
    response_ms: float

    @classmethod
    def of(cls, s: StoredSample) -> Sample:
        return cls(release=s.release, at=s.at, seconds=s.seconds, requests=s.requests, errors=s.errors,
                   rps=round(s.rate, 3), error_rate=round(s.error_rate, 5), response_ms=round(s.response_ms, 1))


class Traffic(View):
    sampled: list[Sample]  # what the agent recorded
    live: list[Sample]  # from this server's own readings of the router, the last minute


class Share(View):
    """A release's part of the router's weight, and its newest live traffic (the live view)."""

    release: int
    percent: int
    rps: float | None = None
    errors: float | None = None  # percent
    ms: float | None = None


class Live(View):
    """The dashboard's live rollout view of an environment."""

    status: Status
    rollout: Rollout | None
    steps: list[Step]  # the newest first
    shares: list[Share]
    samples: list[Sample]  # the agent's, for the charts
    lock: LockStatus
    at: Time


# --- pipeline runs -----------------------------------------------------------------------------


class CiRun(View):
    id: int
    app: str
    ref: str
    commit: str
    trigger: str
    state: RunState
    reason: str
    image: str | None
    repo: str
    spec: str
    created_at: Time
    started_at: Time | None
    finished_at: Time | None

    @classmethod
    def of(cls, r: StoredRun) -> CiRun:
        return cls(id=r.id, app=r.app, ref=r.ref, commit=r.commit, trigger=r.trigger, state=r.state, reason=r.reason,
                   image=r.image or None, repo=r.repo, spec=r.spec, created_at=r.created_at,
                   started_at=r.started_at, finished_at=r.finished_at)


class CiStep(View):
    position: int
    stage: int
    name: str
    kind: StepKind
    state: StepState
    detail: str
    seconds: float | None

    @classmethod
    def of(cls, s: StoredStep) -> CiStep:
        took = s.seconds
        return cls(position=s.position, stage=s.stage, name=s.name, kind=s.kind, state=s.state, detail=s.detail,
                   seconds=round(took, 2) if took is not None else None)


class CiRunDetail(CiRun):
    steps: list[CiStep]


class LogLine(View):
    step: str  # "POSITION:NAME", or "-" for the run's own lines
    line: str


class CiAction(View):
    run: CiRun
    said: list[str]


class Admission(View):
    """What became of a push: queued as a run, or ignored (another event, a deleted ref)."""

    status: Literal["queued", "ignored"]
    run: int | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)  # {"status": "ignored"}: no run


# --- tokens ------------------------------------------------------------------------------------


class Token(View):
    """An API token, never its value."""

    name: str
    role: str
    envs: list[str]
    created_at: Time
    last_used_at: Time | None

    @classmethod
    def of(cls, t: StoredToken) -> Token:
        return cls(name=t.name, role=t.role, envs=list(t.envs), created_at=t.created_at, last_used_at=t.last_used_at)


class NewToken(Token):
    token: str  # shown this once


class Revoked(View):
    revoked: str


# --- images ------------------------------------------------------------------------------------


class VmImage(View):
    image: str
    disk: str
    sha256: str
    inputs_hash: str
    app_image: str
    commit: str | None
    dirty: bool
    size: int  # bytes of the disk

    @classmethod
    def of(cls, i: StoredVmImage) -> VmImage:
        return cls(image=i.ref, disk=str(i.disk), sha256=i.sha256, inputs_hash=i.inputs_hash, app_image=i.app_image,
                   commit=i.commit, dirty=i.dirty, size=i.disk.stat().st_size if i.disk.exists() else 0)


class Node(View):
    """A host of a cluster engine, with the kiln instances running there."""

    id: str
    hostname: str
    role: str  # manager or worker
    leader: bool
    availability: str  # active, pause, drain
    state: str  # ready, down…
    address: str
    labels: dict[str, str]
    instances: int

    @classmethod
    def of(cls, row: NodeRow) -> Node:
        n = row.node
        return cls(id=n.id, hostname=n.hostname, role=n.role, leader=n.leader, availability=n.availability,
                   state=n.state, address=n.address, labels=dict(n.labels), instances=row.instances)


class ImageExport(View):
    release: int
    image: str
    format: str
    file: str
    bytes: int


class GcImage(View):
    image: str
    tags: list[str]


class GcInstance(View):
    instance: str
    state: str


class GcKept(View):
    image: str
    why: str


class Collected(View):
    """What `kiln gc` removed (or would remove) and what it kept, and why."""

    dry_run: bool
    keep: int
    images: list[GcImage]
    instances: list[GcInstance]
    kept: list[GcKept]
