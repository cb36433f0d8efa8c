"""The router contract: one set of tests every Router must pass, so the in-memory FakeRouter
cannot drift from HAProxy. tests/unit runs it against the fake, tests/integration against the
HAProxy router on a real dockerd. It covers every Router method the core calls, as the core
calls them: servers are named after their instances, and an instance's health is what decides
its server's status. A subclass provides four fixtures:

- `engine`: the Engine the routers and instances run on, with `extra_labels` that mark what the
  test makes;
- `make_router`: `make_router(cfg)` -> the Router of that environment (as the Context's
  RouterFactory makes it: a Router made again for the same environment sees the same router);
- `instance`: `instance(cfg, name, answers=True, labels=None)` -> the facts of a running container
  on the environment's network; one that `answers` serves HTTP on `PORT` with its name as the
  body (status 500 for GET /fail, 200 for any other path), one that does not accepts no connection;
- `occupy`: `occupy(bind, port)` -> a context in which another program holds bind:port.

Nothing here sleeps for a fixed time: HAProxy's checks are waited for (`settled`), and the fake
is settled at once."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from kiln import faults
from kiln.errors import NameTaken, PortInUse, RouterError
from kiln.providers.base import ContainerFacts, ContainerSpec, Engine, network_name, selector
from kiln.router.base import Router
from kiln.router.config import backend_name
from kiln.router.haproxy_api import FULL_WEIGHT, ServerStat
from kiln.spec.hardening import Hardening
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import EnvConfig, resolve

PORT = 8000  # where an instance answers
CHECK_INTERVAL = 0.1  # the router's health check of each server, as `add` is given it
ENV = "contract"
NO_SERVER = "No server is available to handle this request."  # HAProxy's 503 when no server can take it

Instance = Callable[..., ContainerFacts]
Occupy = Callable[[str, int], AbstractContextManager[object]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_config(app: str, public: bool = True, preview: bool = True) -> EnvConfig:
    """An environment on 127.0.0.1 with free ports; its public service `web` (if `public`) is
    checked with GET / every CHECK_INTERVAL."""
    web = (f"  web:\n    port: {PORT}\n    healthcheck: {{http: /, interval: {int(CHECK_INTERVAL * 1000)}ms}}\n"
           if public else "")
    ports = f"port: {free_port()}" + (f", preview_port: {free_port()}" if preview else "")
    text = (f"app: {app}\nbuild: {{steps: [\"COPY . /app\"]}}\nservices:\n{web}"
            f"  worker:\n    command: [work]\nenvironments:\n  {ENV}: {{{ports}, bind: 127.0.0.1}}\n")
    return resolve(parse_spec(text), ENV)


def instance_spec(cfg: EnvConfig, name: str, image: str, command: tuple[str, ...],
                  labels: dict[str, str] | None = None) -> ContainerSpec:
    return ContainerSpec(name=name, image=image, network=network_name(cfg.app, cfg.env),
                         labels=labels or selector(cfg.app, cfg.env, "instance"), command=command,
                         hardening=Hardening(writable=("/tmp",)), stop_grace_period=1)


class Killed(BaseException):
    """What SIGKILL at a fault point does to kiln: nothing below it catches this."""


def settled(router: Router, name: str, status: str, preview: bool = False, within: float = 15.0) -> ServerStat:
    """The server once its status is `status` (HAProxy's checks take a few intervals)."""
    end = time.monotonic() + within
    while True:
        stat = router.servers(preview=preview).get(name)
        if (stat is not None and stat.status == status) or time.monotonic() > end:
            assert stat is not None and stat.status == status, (name, status, stat)
            return stat
        time.sleep(0.05)


class RouterContract:
    # --- the world of one test -------------------------------------------------------------------

    @pytest.fixture
    def new_env(self, engine: Engine) -> Iterator[Callable[..., EnvConfig]]:
        """`new_env(public=True, preview=True)`: a fresh environment with its network; everything
        on it (router, instances) is removed afterwards, then the network."""
        made: list[EnvConfig] = []

        def make(public: bool = True, preview: bool = True) -> EnvConfig:
            cfg = env_config("rc" + uuid.uuid4().hex[:8], public, preview)
            engine.ensure_network(network_name(cfg.app, cfg.env), selector(cfg.app, cfg.env))
            made.append(cfg)
            return cfg

        yield make
        for cfg in made:
            for c in engine.containers({"kiln.app": cfg.app}):
                engine.remove(c.name)
            engine.remove(f"kiln-{cfg.app}-{cfg.env}-router")  # whoever holds the name
            engine.remove_network(network_name(cfg.app, cfg.env))

    @pytest.fixture
    def cfg(self, new_env: Callable[..., EnvConfig]) -> EnvConfig:
        return new_env()

    @pytest.fixture
    def router(self, cfg: EnvConfig, make_router: Callable[[EnvConfig], Router]) -> Router:
        router = make_router(cfg)
        assert router.ensure() is True
        return router

    @pytest.fixture
    def up(self, router: Router, instance: Instance) -> Callable[..., str]:
        """`up(name, weight=FULL_WEIGHT)`: an answering instance, added to the router and UP there."""
        def add(name: str, weight: int = FULL_WEIGHT) -> str:
            facts = instance(router.cfg, f"{router.cfg.app}-{name}")
            router.add(facts.name, facts.ip or "", PORT, CHECK_INTERVAL, weight)
            settled(router, facts.name, "UP")
            return facts.name
        return add

    @pytest.fixture
    def kill_at_drain(self, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
        """Arms a kill at the next drain's fault point (kiln killed while a server drains);
        the returned function disarms it."""
        def kill(name: str) -> None:
            if name == "draining":
                raise Killed(name)
        monkeypatch.setattr(faults, "point", kill)
        return lambda: monkeypatch.setattr(faults, "point", lambda name: None)

    # --- the router itself ------------------------------------------------------------------------

    def test_ensure_starts_the_router_once_and_facts_report_it(self, router, cfg):
        assert router.name == f"kiln-{cfg.app}-{cfg.env}-router"
        assert router.ensure() is False  # running with the same config: left alone
        facts = router.facts()
        assert facts is not None and facts.name == router.name and facts.running
        assert (facts.label("app"), facts.label("env"), facts.label("role")) == (cfg.app, cfg.env, "router")
        assert router.servers() == {} and router.servers(preview=True) == {}
        router.check()  # its own ports are its own

    def test_check_and_ensure_refuse_a_port_another_program_holds(self, cfg, make_router, occupy):
        router = make_router(cfg)
        assert router.facts() is None
        router.check()  # nothing holds the ports
        with occupy(cfg.bind, cfg.port):
            with pytest.raises(PortInUse):
                router.check()
            with pytest.raises(PortInUse):
                router.ensure()
            assert router.facts() is None  # nothing was started
        assert cfg.preview_port is not None
        with occupy(cfg.bind, cfg.preview_port), pytest.raises(PortInUse):
            router.check()  # the preview port is the router's too

    def test_a_router_name_held_by_another_environment_is_name_taken(self, cfg, make_router, instance):
        router = make_router(cfg)
        other = {"kiln.app": f"{cfg.app}x", "kiln.env": cfg.env, "kiln.role": "router"}
        instance(cfg, router.name, answers=False, labels=other)
        with pytest.raises(NameTaken):
            router.facts()
        with pytest.raises(NameTaken):
            router.check()
        with pytest.raises(NameTaken):
            router.ensure()

    def test_a_stopped_router_answers_nothing_and_ensure_starts_one_that_knows_no_server(
            self, router, engine, up):
        a = up("a")
        engine.stop(router.name, 1)
        facts = router.facts()
        assert facts is not None and not facts.running
        with pytest.raises(RouterError):
            router.servers()
        with pytest.raises(RouterError):
            router.add("b", "127.0.0.1", PORT, CHECK_INTERVAL)
        with pytest.raises(RouterError):
            router.set_weights({a: 1})
        with pytest.raises(RouterError):
            router.drain_and_remove(a, 1.0)
        with pytest.raises(ConnectionRefusedError):
            router.get("/", 2.0)  # nothing listens on the preview port
        router.check()  # its ports are free again
        assert router.ensure() is True
        assert router.facts().running
        assert router.servers() == {}  # a new HAProxy: servers added at run time are gone

    def test_remove_takes_the_router_and_its_servers_away(self, router, up):
        up("a")
        assert router.remove() is True
        assert router.facts() is None
        with pytest.raises(RouterError):
            router.servers()
        assert router.remove() is False
        assert router.ensure() is True and router.servers() == {}

    def test_ensure_with_a_changed_config_starts_a_new_router(self, router, cfg, make_router, up):
        a = up("a")
        again = make_router(cfg)
        assert again.ensure() is False and set(again.servers()) == {a}  # same config: the same router
        moved = make_router(cfg.model_copy(update={"port": free_port()}))
        assert moved.ensure() is True
        assert moved.facts().running and moved.servers() == {}

    # --- servers ----------------------------------------------------------------------------------

    def test_an_added_server_comes_up_with_its_address_and_weight_and_no_traffic(self, router, instance):
        facts = instance(router.cfg, f"{router.cfg.app}-a")
        router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL)
        stat = settled(router, facts.name, "UP")
        assert stat.serving and stat.name == facts.name
        assert stat.backend == backend_name("web") and stat.address == f"{facts.ip}:{PORT}"
        assert stat.weight == FULL_WEIGHT
        assert (stat.current_sessions, stat.queued, stat.total, stat.responses, stat.errors) == (0, 0, 0, 0, 0)
        assert router.servers(preview=True) == {}  # the preview backend is another backend

    def test_a_server_whose_instance_does_not_answer_is_down(self, router, instance):
        facts = instance(router.cfg, f"{router.cfg.app}-mute", answers=False)
        router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL)
        stat = settled(router, facts.name, "DOWN")  # checked (not "no check"), enabled (not MAINT)
        assert not stat.serving

    def test_a_server_goes_down_when_its_instance_goes_away(self, router, engine, up):
        a = up("a")
        engine.remove(a)
        assert not settled(router, a, "DOWN").serving
        assert a in router.servers()  # the router keeps it until kiln removes it

    def test_a_server_at_weight_zero_is_up_and_idle(self, router, up):
        a = up("a", weight=0)
        stat = router.servers()[a]
        assert stat.weight == 0 and stat.serving and stat.status == "UP"

    def test_adding_a_name_the_router_has_is_refused(self, router, up, instance):
        a = up("a")
        address = router.servers()[a].address
        other = instance(router.cfg, f"{router.cfg.app}-b")
        with pytest.raises(RouterError):
            router.add(a, other.ip, PORT, CHECK_INTERVAL)
        assert router.servers()[a].address == address and address != f"{other.ip}:{PORT}"
        router.add(a, other.ip, PORT, CHECK_INTERVAL, preview=True)  # the preview backend is another
        with pytest.raises(RouterError):
            router.add(a, other.ip, PORT, CHECK_INTERVAL, preview=True)

    # --- weights ----------------------------------------------------------------------------------

    def test_set_weights_sets_several_at_once_and_again_changes_nothing(self, router, up):
        a, b = up("a"), up("b")
        router.set_weights({a: 256, b: 0})
        assert {n: s.weight for n, s in router.servers().items()} == {a: 256, b: 0}
        router.set_weights({a: 256, b: 0})
        router.set_weights({})
        assert {n: s.weight for n, s in router.servers().items()} == {a: 256, b: 0}
        assert all(s.status == "UP" for s in router.servers().values())  # weight 0 is idle, not drained

    def test_a_weight_outside_0_to_256_is_refused(self, router, up, instance):
        a = up("a")
        for weight in (257, -1):
            with pytest.raises(RouterError):
                router.set_weights({a: weight})
        assert router.servers()[a].weight == FULL_WEIGHT
        b = instance(router.cfg, f"{router.cfg.app}-b")
        with pytest.raises(RouterError):
            router.add(b.name, b.ip, PORT, CHECK_INTERVAL, weight=257)
        assert set(router.servers()) == {a}

    def test_weights_of_unknown_servers_are_refused_after_the_others_are_set(self, router, up):
        a = up("a")
        with pytest.raises(RouterError):
            router.set_weights({a: 50, "ghost": 60})  # one request: each command applies on its own
        assert router.servers()[a].weight == 50 and "ghost" not in router.servers()

    # --- the preview backend ----------------------------------------------------------------------

    def test_a_preview_server_is_its_own_server(self, router, up):
        a = up("a")
        facts_address = router.servers()[a].address
        router.add(a, facts_address.rsplit(":", 1)[0], PORT, CHECK_INTERVAL, preview=True)
        stat = settled(router, a, "UP", preview=True)
        assert stat.backend == backend_name("web", preview=True) and stat.address == facts_address
        assert stat.weight == FULL_WEIGHT
        router.set_weights({a: 7})
        assert router.servers()[a].weight == 7 and router.servers(preview=True)[a].weight == FULL_WEIGHT
        router.remove_preview(a)
        router.remove_preview(a)  # gone: nothing to do
        router.remove_preview("ghost")
        assert router.servers(preview=True) == {} and router.servers()[a].weight == 7

    def test_get_goes_round_the_serving_preview_servers_and_is_counted_on_each(self, router, instance):
        status, body = router.get("/", 2.0)
        assert status == 503 and NO_SERVER in body  # no preview server yet
        names = []
        for n in ("a", "b"):
            facts = instance(router.cfg, f"{router.cfg.app}-{n}")
            router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL, preview=True)  # only in the preview
            settled(router, facts.name, "UP", preview=True)
            names.append(facts.name)
        answers = [router.get("/", 2.0) for _ in range(4)]
        assert {status for status, _ in answers} == {200} and {body for _, body in answers} == set(names)
        stats = router.servers(preview=True)
        for n in names:
            served = sum(body == n for _, body in answers)
            assert (stats[n].responses, stats[n].total, stats[n].errors) == (served, served, 0)
        status, failed = router.get("/fail", 2.0)
        assert status == 500
        after = router.servers(preview=True)
        assert after[failed].errors == 1 and after[failed].responses == stats[failed].responses + 1
        assert router.servers() == {}  # the public backend saw none of it

    def test_without_a_preview_port_there_is_no_preview_backend(self, new_env, make_router, instance):
        cfg = new_env(preview=False)
        router = make_router(cfg)
        assert router.ensure() is True
        facts = instance(cfg, f"{cfg.app}-a")
        assert router.servers(preview=True) == {}
        with pytest.raises(RouterError):
            router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL, preview=True)
        with pytest.raises(RouterError):
            router.get("/", 2.0)
        router.remove_preview(facts.name)  # nothing to remove
        router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL)
        router.drain_and_remove(facts.name, 1.0)
        assert router.servers() == {}

    def test_without_a_public_service_there_are_no_servers(self, new_env, make_router, instance):
        cfg = new_env(public=False)
        router = make_router(cfg)
        assert router.ensure() is True
        facts = instance(cfg, f"{cfg.app}-a")
        assert router.servers() == {} and router.servers(preview=True) == {}
        with pytest.raises(RouterError):
            router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL)
        with pytest.raises(RouterError):
            router.set_weights({})
        with pytest.raises(RouterError):
            router.drain_and_remove(facts.name, 1.0)

    # --- drain and removal ------------------------------------------------------------------------

    def test_drain_and_remove_takes_a_server_out_of_both_backends(self, router, engine, up):
        a, b = up("a"), up("b", weight=30)
        router.add(a, router.servers()[a].address.rsplit(":", 1)[0], PORT, CHECK_INTERVAL, preview=True)
        waited = router.drain_and_remove(a, 5.0)
        assert 0.0 <= waited < 5.0  # nothing was in flight
        assert set(router.servers()) == {b} and router.servers(preview=True) == {}
        assert router.servers()[b].weight == 30 and router.servers()[b].status == "UP"
        assert engine.container(a).running  # the router never touches an instance
        assert router.drain_and_remove(a, 5.0) == 0.0  # gone: nothing to do
        assert router.drain_and_remove("ghost", 5.0) == 0.0
        assert set(router.servers()) == {b}

    def test_drain_and_remove_of_a_server_only_in_the_preview_removes_it_there(self, router, instance):
        facts = instance(router.cfg, f"{router.cfg.app}-p")
        router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL, preview=True)
        assert router.drain_and_remove(facts.name, 5.0) == 0.0
        assert router.servers(preview=True) == {}

    def test_a_kill_while_draining_leaves_the_server_draining_and_a_new_drain_removes_it(
            self, router, up, kill_at_drain):
        a = up("a", weight=40)
        router.add(a, router.servers()[a].address.rsplit(":", 1)[0], PORT, CHECK_INTERVAL, preview=True)
        settled(router, a, "UP", preview=True)
        with pytest.raises(Killed):
            router.drain_and_remove(a, 5.0)
        kill_at_drain()
        stat = router.servers()[a]
        assert (stat.status, stat.weight, stat.serving) == ("DRAIN", 40, False)
        assert router.servers(preview=True)[a].status == "UP"  # the drain is the public backend's
        with pytest.raises(RouterError):
            router.add(a, "127.0.0.1", PORT, CHECK_INTERVAL)  # still there
        router.drain_and_remove(a, 5.0)
        assert router.servers() == {} and router.servers(preview=True) == {}

    def test_a_dead_server_is_put_in_maintenance_and_can_be_added_again_after_removal(
            self, router, up, kill_at_drain):
        a = up("a")
        address = router.servers()[a].address.rsplit(":", 1)[0]
        with pytest.raises(Killed):
            router.drain_and_remove(a, 5.0, dead=True)
        kill_at_drain()
        stat = router.servers()[a]
        assert (stat.status, stat.serving) == ("MAINT", False)
        # What the executor does with a server it finds in maintenance: remove it, add it whole.
        router.drain_and_remove(a, 0.0)
        assert a not in router.servers()
        router.add(a, address, PORT, CHECK_INTERVAL)
        assert settled(router, a, "UP").weight == FULL_WEIGHT

    def test_a_down_server_shows_down_while_it_drains(self, router, instance, kill_at_drain):
        facts = instance(router.cfg, f"{router.cfg.app}-mute", answers=False)
        router.add(facts.name, facts.ip, PORT, CHECK_INTERVAL)
        settled(router, facts.name, "DOWN")
        with pytest.raises(Killed):
            router.drain_and_remove(facts.name, 5.0)
        kill_at_drain()
        assert router.servers()[facts.name].status == "DOWN"  # HAProxy shows DRAIN only on a server that is up
        router.drain_and_remove(facts.name, 5.0)
        assert router.servers() == {}
