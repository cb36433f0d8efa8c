"""The engine contract: one set of tests every Engine must pass, so the in-memory fake cannot
drift from the real engines. It runs against four: the fake (tests/unit/test_engine_contract.py),
Docker (tests/integration/test_engine_contract.py), Swarm (the same file, in the cluster suite)
and QEMU (tests/integration/test_vm.py, in the VM suite).

Where engines legitimately differ, the contract asks the engine's declaration (providers/kind.py)
and holds each to what it declares: a Swarm instance is gone once stopped (`stop_removes`), kiln
checks a task from inside its router (`probes_from_router`), a VM is probed through its port only
(`health_kinds`) and boots first (`boot_grace`), a VM image is no container image (`artifact`);
what an engine enforces of a ContainerSpec is what its `enforceable` says.

A subclass provides these fixtures:

- `engine`: the Engine under test, with `extra_labels` that mark what the test makes;
- `kind`: its declaration;
- `image`: the artifact its builder bakes (a container image's tag, a VM image's reference), whose
  service `web` answers HTTP on `PORT` (a container image: when it runs `serve_argv`);
- `script`: `script(code, lines)` -> a command that prints `lines` and exits with `code`
  (None: runs until stopped), run by a hook of that image;
- optionally `repository` (where a registry engine publishes `image`) and `grace` (the seconds
  `kind.boot_grace` gives the spec `image` was baked from)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from kiln.agent.drift import changed_files
from kiln.errors import EngineError
from kiln.providers.base import HOOK, INSTANCE, ROUTER, ContainerSpec, Engine, Limits, router_name
from kiln.providers.kind import CONTAINER_IMAGE, EngineKind
from kiln.spec.hardening import Hardening
from kiln.spec.models import HealthCheck

PORT = 8000
SERVICE = "web"


class Names:
    """Names of what a test makes; removed (containers, then networks) when the test ends."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, what: str) -> str:
        return self.add(f"kiln-contract-{what}-{uuid.uuid4().hex[:8]}")

    def add(self, name: str) -> str:
        self.made.append(name)
        return name


class EngineFixtures:
    """What the engine and node contracts share: names cleaned up, a network, the image released."""

    serve_argv: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # placement of instances on a cluster engine

    @pytest.fixture
    def repository(self) -> str | None:
        return None

    @pytest.fixture
    def grace(self) -> float:
        return 0.0

    @pytest.fixture
    def names(self, engine: Engine) -> Iterator[Names]:
        names = Names()
        yield names
        for n in names.made:  # containers first, then the networks they were on
            engine.remove(n)
        for n in names.made:
            try:
                engine.remove_network(n)
            except EngineError:
                pass  # not a network; or one a cluster detaches a moment later (the session removes it by label)

    @pytest.fixture
    def net(self, engine: Engine, names: Names) -> str:
        network = names("net")
        engine.ensure_network(network, {"kiln.app": "contract"})
        engine.ensure_network(network, {"kiln.app": "contract"})  # idempotent
        return network

    @pytest.fixture
    def released(self, engine: Engine, image: str, repository: str | None) -> str:
        """What a release of `image` records and instances start from (Images.publish)."""
        found = engine.image_id(image)
        assert found is not None, image
        return engine.publish(found, repository)

    def spec(self, name: str, image: str, net: str, command: tuple[str, ...] | None = None,
             role: str = INSTANCE, environment: dict[str, str] | None = None, **more: object) -> ContainerSpec:
        return ContainerSpec(name=name, image=image, network=net,
                             labels={"kiln.app": "contract", "kiln.role": role, "kiln.env": name, "kiln.service": SERVICE},
                             command=command, environment={"PORT": str(PORT), **(environment or {})},
                             constraints=self.constraints, **more)  # type: ignore[arg-type]


class EngineContract(EngineFixtures):
    def test_the_engine_is_what_its_declaration_says(self, engine, kind: EngineKind):
        assert engine.name == kind.name and engine.host_network == kind.host_network

    # --- containers --------------------------------------------------------------------------

    def test_start_reports_a_running_container_with_its_labels_and_address(self, engine, released, net, names):
        name = names("c")
        facts = engine.start(self.spec(name, released, net, self.serve_argv))
        assert facts.name == name and facts.running and facts.exit_code is None
        assert facts.label("app") == "contract" and facts.label("env") == name
        assert facts.ip and facts.image == released  # the image as the release records it
        assert [c.name for c in engine.containers({"kiln.env": name})] == [name]
        again = engine.container(name)  # the same container, still running (its health may have moved on)
        assert again is not None and again.running
        assert (again.id, again.image, again.labels, again.ip, again.node) == (facts.id, facts.image, facts.labels,
                                                                               facts.ip, facts.node)

    def test_unknown_containers_are_none_and_removing_or_stopping_them_is_no_error(self, engine, names):
        ghost = names("ghost")
        assert engine.container(ghost) is None
        assert engine.containers({"kiln.env": ghost}) == []
        engine.stop(ghost, 1)
        engine.remove(ghost)

    def test_a_name_in_use_or_a_missing_network_is_an_engine_error(self, engine, released, net, names):
        name = names("dup")
        engine.start(self.spec(name, released, net, self.serve_argv))
        with pytest.raises(EngineError):
            engine.start(self.spec(name, released, net, self.serve_argv))
        with pytest.raises(EngineError):
            engine.start(self.spec(names("nonet"), released, names("missing-net"), self.serve_argv))

    def test_stop_then_remove(self, engine, kind, released, net, names):
        name = names("stop")
        engine.start(self.spec(name, released, net, self.serve_argv, stop_grace_period=1))
        engine.stop(name, 1)
        stopped = engine.container(name)
        if kind.stop_removes:
            assert stopped is None
        else:
            assert stopped is not None and not stopped.running and stopped.exit_code is not None
        engine.remove(name)
        assert engine.container(name) is None

    def test_a_network_with_a_container_cannot_be_removed_until_the_container_is(self, engine, released, net, names):
        name = names("onnet")
        engine.start(self.spec(name, released, net, self.serve_argv))
        with pytest.raises(EngineError):
            engine.remove_network(net)
        engine.remove(name)
        engine.remove_network(net)
        engine.remove_network(net)  # gone: no error

    def test_hardening_is_what_the_spec_says_as_the_engine_enforces_it(self, engine, released, net, names):
        name = names("hard")
        spec = self.spec(name, released, net, self.serve_argv, hardening=Hardening(writable=("/tmp", "/var/cache")),
                         environment={"GREETING": "hi"})
        engine.start(spec)
        want = engine.enforceable(spec)
        d = engine.details(name)
        assert d is not None
        assert d.read_only and want.hardening.read_only and d.cap_drop == ("ALL",) and d.cap_add == () and not d.privileged
        assert d.security_opt == (("no-new-privileges:true",) if want.hardening.no_new_privileges else ())
        assert d.tmpfs == tuple(sorted(want.hardening.writable)) and d.mounts == ()
        assert d.env["GREETING"] == "hi"
        changes = engine.changes(name)  # the engine's own init binary may show; nothing else can write
        assert changed_files(changes, want.hardening.writable) == [], changes
        assert engine.details(names("none")) is None

    def test_details_report_the_limits_the_container_started_with(self, engine, released, net, names):
        default = self.spec(names("deflim"), released, net, self.serve_argv)
        limited = self.spec(names("lim"), released, net, self.serve_argv,
                            limits=Limits(memory=96 * 1024**2, cpus=0.5, pids=64))
        engine.start(default)
        engine.start(limited)
        assert default.limits == Limits(memory=512 * 1024**2, cpus=1.0, pids=512)
        assert engine.details(default.name).limits == engine.enforceable(default).limits
        assert engine.details(limited.name).limits == engine.enforceable(limited).limits

    # --- one-off runs (hooks, CI steps) ----------------------------------------------------------

    def test_run_once_returns_the_exit_code_and_output_and_removes_the_container(self, engine, released, net,
                                                                               names, script):
        name = names("once")
        code, output = engine.run_once(self.spec(name, released, net, script(3, ["first", "second"]), HOOK), 30)
        assert code == 3 and "first" in output and "second" in output
        assert engine.container(name) is None

    def test_run_streamed_hands_over_each_line(self, engine, released, net, names, script):
        lines: list[str] = []
        finished = engine.run_streamed(self.spec(names("stream"), released, net, script(0, ["a", "b"]), HOOK),
                                       lines.append, 30, lambda: False)
        assert finished.code == 0 and finished.stopped == ""
        assert [line for line in lines if line] == ["a", "b"]

    def test_run_streamed_stops_on_timeout_and_on_cancel(self, engine, released, net, names, script):
        timed = engine.run_streamed(self.spec(names("slow"), released, net, script(None, []), HOOK),
                                    lambda _: None, 0.5, lambda: False)
        assert timed.code is None and timed.stopped == "timeout"
        cancelled = engine.run_streamed(self.spec(names("cancel"), released, net, script(None, []), HOOK),
                                        lambda _: None, 60, lambda: True)
        assert cancelled.code is None and cancelled.stopped == "cancelled"

    # --- probes ----------------------------------------------------------------------------------

    def test_probe_and_get_reach_a_serving_instance_and_not_a_stopped_one(self, engine, kind, released, net,
                                                                          names, script, grace):
        name = names("probe")
        if kind.probes_from_router:  # kiln's checks of an instance run from inside its environment's router
            router = names.add(router_name("contract", name))
            engine.start(self.spec(router, released, net, script(None, []), ROUTER))  # a stand-in: it only runs
        facts = engine.start(self.spec(name, released, net, self.serve_argv, stop_grace_period=1))
        check = HealthCheck(http="/", timeout=1.0)
        deadline = time.monotonic() + 20 + grace  # a VM boots first
        while not engine.probe(facts, check, PORT) and time.monotonic() < deadline:
            time.sleep(0.2)
            facts = engine.container(name)
        assert engine.probe(facts, check, PORT), engine.logs(name)
        assert engine.probe(facts, HealthCheck(tcp=True, timeout=1.0), PORT)
        assert engine.get(facts, PORT, "/", 2.0)[0] == 200
        engine.stop(name, 1)
        after = engine.container(name)
        if kind.stop_removes:
            assert after is None
            after = facts  # as kiln last saw it: its address answers no more
        assert not engine.probe(after, check, PORT)

    def test_a_command_check_runs_where_the_engine_declares_it_can(self, engine, kind, released, net, names):
        spec = self.spec(names("cmd"), released, net, self.serve_argv, health_command=("true",))
        check = HealthCheck(command=("true",), timeout=1.0)
        if "command" not in kind.health_kinds:  # kiln validate refuses it; the engine does not carry it out
            assert engine.enforceable(spec).health_command is None
            return
        facts = engine.start(spec)
        deadline = time.monotonic() + 20
        while not engine.probe(facts, check, None) and time.monotonic() < deadline:
            time.sleep(0.2)
            facts = engine.container(spec.name)
        assert facts.health == "healthy" and engine.probe(facts, check, None)

    # --- events ----------------------------------------------------------------------------------

    def test_events_report_start_and_die_with_the_container_labels(self, engine, released, net, names):
        name = names("ev")
        since = time.time() - 1
        engine.start(self.spec(name, released, net, self.serve_argv, stop_grace_period=1))
        engine.stop(name, 1)
        seen = list(engine.events({"kiln.env": name}, since=since, until=time.time() + 1))
        actions = [ev.action for ev in seen]
        assert "start" in actions and "die" in actions
        assert all(ev.name == name and ev.label("app") == "contract" for ev in seen)

    # --- images ----------------------------------------------------------------------------------

    def test_image_lookups(self, engine, kind, image):
        image_id = engine.image_id(image)
        assert image_id is not None
        if kind.artifact == CONTAINER_IMAGE:
            assert image_id.startswith("sha256:") and "PATH" in engine.image_env(image_id)
        else:  # a VM image is named by its own reference, and gives its instances no environment
            assert image_id == image and engine.image_env(image_id) == {}
        assert engine.image_id("kiln-contract/never:made") is None
        assert engine.find_image("kiln-contract/never:made", {}) is None

    def test_pull_and_push_that_cannot_reach_a_registry_are_engine_errors(self, engine, image):
        with pytest.raises(EngineError):
            engine.pull("127.0.0.1:9/kiln-contract/never:1")
        unreachable = "127.0.0.1:9/kiln-contract/unreachable"
        try:
            with pytest.raises(EngineError):
                engine.push(engine.image_id(image), unreachable)
        finally:  # the tag the push gave the image before it failed
            for tag in {t for _, tags in engine.images({}) for t in tags if t.startswith(unreachable + ":")}:
                engine.remove_image(tag)
