"""kiln status: what runs in an environment; the agent watching it; the dashboard's figures of it
(an environment at a glance, its live rollout view)."""

from __future__ import annotations

from datetime import timedelta

from kiln import views
from kiln.agent.sampling import release_of
from kiln.context import Context
from kiln.errors import KilnError, RouterError
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.providers.base import INSTANCE, selector
from kiln.rollout.lock import lease_name
from kiln.router.haproxy_api import ServerStat
from kiln.spec.resolve import EnvConfig
from kiln.usecases import catalog, history, locks

PLOT_MINUTES = 60  # the live view's charts
DRIFT_DAYS = 1  # the overview counts the taints found this recently


def status(ctx: Context, cfg: EnvConfig) -> views.Status:
    release = ctx.ledger.releases.current(cfg.app, cfg.env)
    containers = ctx.engine_for(cfg).containers(selector(cfg.app, cfg.env, INSTANCE))
    router = ctx.router(cfg)
    router_facts = router.facts()
    routed: dict[str, ServerStat] = {}
    if router_facts and router_facts.running:
        try:
            routed = router.servers()
        except RouterError:
            routed = {}
    instances = []
    for c in sorted(containers, key=lambda c: c.name):
        server = routed.get(c.name)
        if not c.running:
            health = f"exited ({c.exit_code})" if c.exit_code is not None else c.state
        elif server is not None:
            health = "healthy" if server.serving else server.status.lower()
            if server.serving and server.weight == 0:
                health = "idle"  # healthy, in the router, no traffic (blue-green before or after a switch)
        else:
            health = c.health or "running"
        instances.append(views.Instance(id=c.name, service=c.label("service") or "", release=int(c.label("release") or 0),
                                        health=health, in_router=server is not None, container=c.id[:12],
                                        node=c.node, weight=server.weight if server is not None else None))
    served = release.env_config() if release else cfg
    return views.Status(
        app=cfg.app, env=cfg.env, url=served.url,
        release=views.ServedRelease(number=release.number, image=release.image, commit=release.commit,
                                    created_at=release.created_at) if release else None,
        preview_url=served.preview_url, engine=served.engine,
        router=views.RouterState(state=router_facts.state if router_facts else "absent", name=router.name),
        waiting=[views.Waiting(rollout=r.id, release=r.to_release, state=r.state, phase=r.phase)
                 for r in ctx.ledger.rollouts.unfinished(cfg.app, cfg.env)],
        instances=instances,
        relaxations={s.name: list(s.relaxations) for s in served.services if s.relaxations},
        limits={s.name: views.Limits.model_validate(s.resources.model_dump(mode="json")) for s in served.services},
        agent=agent_state(ctx, cfg.app, cfg.env),
    )


def agent_state(ctx: Context, app: str, env: str) -> views.AgentState:
    """Which agent watches app/env, and whether its meltdown guard halted self-healing."""
    lease = ctx.ledger.locks.get(app, lease_name(env))
    leader = lease.holder if lease and not lease.expired(now()) else None
    last = ctx.ledger.events.of(app, env, kinds=(kinds.AGENT_HALTED, kinds.AGENT_RESUMED), limit=1)
    halted = last[-1] if last and last[-1].kind == kinds.AGENT_HALTED else None
    return views.AgentState(leader=leader, healing="halted" if halted else "active",
                            halted=views.Halted(at=halted.at, why=halted.message) if halted else None)


def overview(ctx: Context, cfg: EnvConfig) -> views.Overview:
    """app/env at a glance: its status, instances counted by health and by node, recent taints; an
    engine or router that does not answer is the row's error, not the page's."""
    try:
        st = status(ctx, cfg)
    except KilnError as exc:
        return views.Overview(app=cfg.app, env=cfg.env, error=exc.message)
    health: dict[str, int] = {}
    nodes: dict[str, int] = {}
    for i in st.instances:
        health[i.health] = health.get(i.health, 0) + 1
        nodes[i.node or "this host"] = nodes.get(i.node or "this host", 0) + 1
    taints = ctx.ledger.events.of(cfg.app, cfg.env, kinds=(kinds.INSTANCE_TAINTED,), limit=None,
                                  since=now() - timedelta(days=DRIFT_DAYS))
    return views.Overview(app=cfg.app, env=cfg.env, status=st, health=health, nodes=nodes, drift=len(taints))


def overviews(ctx: Context, specs: catalog.Specs) -> list[views.Overview]:
    """Every environment of every app (usecases/catalog.py) at a glance."""
    return [overview(ctx, catalog.config(ctx, app, specs.get(app), env))
            for app in catalog.apps(ctx, specs) for env in catalog.envs(ctx, app, specs.get(app))]


def shares(routed: dict[str, ServerStat], live: list[views.Sample]) -> list[views.Share]:
    """Each release's share of the router's weight (serving servers only), in percent, with its
    newest live traffic."""
    weights: dict[int, int] = {}
    for name, s in routed.items():
        number = release_of(name)
        if number is not None and s.serving:
            weights[number] = weights.get(number, 0) + s.weight
    total = sum(weights.values()) or 1
    newest = {sample.release: sample for sample in live}
    out = []
    for number, weight in sorted(weights.items()):
        got = newest.get(number)
        out.append(views.Share(release=number, percent=round(100 * weight / total),
                               rps=round(got.rps, 1) if got else None,
                               errors=round(100 * got.error_rate, 2) if got else None,
                               ms=round(got.response_ms, 1) if got else None))
    return out


def live(ctx: Context, cfg: EnvConfig, routed: dict[str, ServerStat], traffic: list[views.Sample],
         steps: int = 12) -> views.Live:
    """The live rollout view: status, the latest rollout and its newest `steps` steps, each
    release's share of the traffic (`routed`: the router's servers, `traffic`: live samples), the
    agent's samples of the last PLOT_MINUTES, the lock."""
    latest = next(iter(history.rollouts(ctx, cfg.app, cfg.env, 1)), None)
    recent = list(reversed(history.rollout(ctx, cfg.app, cfg.env, latest.id).steps[-steps:])) if latest else []
    return views.Live(status=status(ctx, cfg), rollout=latest, steps=recent, shares=shares(routed, traffic),
                      samples=history.samples(ctx, cfg.app, cfg.env, PLOT_MINUTES),
                      lock=locks.status(ctx, cfg.app, cfg.env), at=now())
