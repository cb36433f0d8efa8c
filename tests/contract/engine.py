"""The engine contract: one set of tests every Engine must pass, so the in-memory fake cannot
drift from the Docker provider. tests/unit runs it against the fake, tests/integration against a
real dockerd. A subclass provides three fixtures:

- `engine`: the Engine under test, with `extra_labels` that mark what the test makes;
- `image`: an image on that engine whose command `serve_argv` answers HTTP on `PORT`;
- `script`: `script(code, lines)` -> a command that prints `lines` and exits with `code`
  (None: runs until stopped)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from kiln.agent.drift import changed_files
from kiln.errors import EngineError
from kiln.providers.base import ContainerSpec, Engine, Limits
from kiln.spec.hardening import Hardening
from kiln.spec.models import HealthCheck

PORT = 8000
Script = Callable[[int | None, list[str]], tuple[str, ...]]


class EngineContract:
    serve_argv: tuple[str, ...] = ()

    @pytest.fixture
    def names(self, engine: Engine) -> Iterator[Callable[[str], str]]:
        made: list[str] = []

        def name(kind: str) -> str:
            made.append(f"kiln-contract-{kind}-{uuid.uuid4().hex[:8]}")
            return made[-1]

        yield name
        for n in made:  # containers first, then the networks they were on
            engine.remove(n)
        for n in made:
            try:
                engine.remove_network(n)
            except EngineError:
                pass

    @pytest.fixture
    def net(self, engine: Engine, names: Callable[[str], str]) -> str:
        network = names("net")
        engine.ensure_network(network, {"kiln.app": "contract"})
        engine.ensure_network(network, {"kiln.app": "contract"})  # idempotent
        return network

    def spec(self, name: str, image: str, net: str, command: tuple[str, ...] | None = None,
             **more: object) -> ContainerSpec:
        return ContainerSpec(name=name, image=image, network=net,
                             labels={"kiln.app": "contract", "kiln.role": "instance", "kiln.env": name},
                             command=command, **more)  # type: ignore[arg-type]

    # --- containers --------------------------------------------------------------------------

    def test_start_reports_a_running_container_with_its_labels_and_address(self, engine, image, net, names):
        name = names("c")
        facts = engine.start(self.spec(name, image, net, self.serve_argv))
        assert facts.name == name and facts.running and facts.exit_code is None
        assert facts.label("app") == "contract" and facts.label("env") == name
        assert facts.ip and facts.image == engine.image_id(image)
        assert [c.name for c in engine.containers({"kiln.env": name})] == [name]
        assert engine.container(name) == facts or engine.container(name).running

    def test_unknown_containers_are_none_and_removing_or_stopping_them_is_no_error(self, engine, names):
        ghost = names("ghost")
        assert engine.container(ghost) is None
        assert engine.containers({"kiln.env": ghost}) == []
        engine.stop(ghost, 1)
        engine.remove(ghost)

    def test_a_name_in_use_or_a_missing_network_is_an_engine_error(self, engine, image, net, names):
        name = names("dup")
        engine.start(self.spec(name, image, net, self.serve_argv))
        with pytest.raises(EngineError):
            engine.start(self.spec(name, image, net, self.serve_argv))
        with pytest.raises(EngineError):
            engine.start(self.spec(names("nonet"), image, names("missing-net"), self.serve_argv))

    def test_stop_then_remove(self, engine, image, net, names):
        name = names("stop")
        engine.start(self.spec(name, image, net, self.serve_argv, stop_grace_period=1))
        engine.stop(name, 1)
        stopped = engine.container(name)
        assert stopped is not None and not stopped.running and stopped.exit_code is not None
        engine.remove(name)
        assert engine.container(name) is None

    def test_a_network_with_a_container_cannot_be_removed_until_the_container_is(self, engine, image, net, names):
        name = names("onnet")
        engine.start(self.spec(name, image, net, self.serve_argv))
        with pytest.raises(EngineError):
            engine.remove_network(net)
        engine.remove(name)
        engine.remove_network(net)
        engine.remove_network(net)  # gone: no error

    def test_hardening_is_what_the_spec_says(self, engine, image, net, names):
        name = names("hard")
        engine.start(self.spec(name, image, net, self.serve_argv, hardening=Hardening(writable=("/tmp", "/var/cache")),
                               environment={"GREETING": "hi"}))
        d = engine.details(name)
        assert d is not None
        assert d.read_only and d.cap_drop == ("ALL",) and d.cap_add == () and not d.privileged
        assert d.security_opt == ("no-new-privileges:true",)
        assert d.tmpfs == ("/tmp", "/var/cache") and d.mounts == ()
        assert d.env["GREETING"] == "hi"
        changes = engine.changes(name)  # the engine's own init binary may show; nothing else can write
        assert changed_files(changes, ("/tmp", "/var/cache")) == [], changes
        assert engine.details(names("none")) is None

    def test_details_report_the_limits_the_container_started_with(self, engine, image, net, names):
        default, limited = names("deflim"), names("lim")
        engine.start(self.spec(default, image, net, self.serve_argv))
        engine.start(self.spec(limited, image, net, self.serve_argv,
                               limits=Limits(memory=96 * 1024**2, cpus=0.5, pids=64)))
        assert engine.details(default).limits == Limits(memory=512 * 1024**2, cpus=1.0, pids=512)
        assert engine.details(limited).limits == Limits(memory=96 * 1024**2, cpus=0.5, pids=64)

    # --- one-off runs --------------------------------------------------------------------------

    def test_run_once_returns_the_exit_code_and_output_and_removes_the_container(self, engine, image, net,
                                                                               names, script):
        name = names("once")
        code, output = engine.run_once(self.spec(name, image, net, script(3, ["first", "second"])), 30)
        assert code == 3 and "first" in output and "second" in output
        assert engine.container(name) is None

    def test_run_streamed_hands_over_each_line(self, engine, image, net, names, script):
        lines: list[str] = []
        finished = engine.run_streamed(self.spec(names("stream"), image, net, script(0, ["a", "b"])),
                                       lines.append, 30, lambda: False)
        assert finished.code == 0 and finished.stopped == ""
        assert [line for line in lines if line] == ["a", "b"]

    def test_run_streamed_stops_on_timeout_and_on_cancel(self, engine, image, net, names, script):
        timed = engine.run_streamed(self.spec(names("slow"), image, net, script(None, [])), lambda _: None,
                                    0.5, lambda: False)
        assert timed.code is None and timed.stopped == "timeout"
        cancelled = engine.run_streamed(self.spec(names("cancel"), image, net, script(None, [])),
                                        lambda _: None, 60, lambda: True)
        assert cancelled.code is None and cancelled.stopped == "cancelled"

    # --- probes ----------------------------------------------------------------------------------

    def test_probe_and_get_reach_a_serving_instance_and_not_a_stopped_one(self, engine, image, net, names):
        name = names("probe")
        engine.start(self.spec(name, image, net, self.serve_argv, stop_grace_period=1))
        facts = engine.container(name)
        check = HealthCheck(http="/", timeout=1.0)
        deadline = time.monotonic() + 20
        while not engine.probe(facts, check, PORT) and time.monotonic() < deadline:
            time.sleep(0.1)
            facts = engine.container(name)
        assert engine.probe(facts, check, PORT)
        assert engine.probe(facts, HealthCheck(tcp=True, timeout=1.0), PORT)
        assert engine.get(facts, PORT, "/", 2.0)[0] == 200
        engine.stop(name, 1)
        assert not engine.probe(engine.container(name), check, PORT)

    # --- events ----------------------------------------------------------------------------------

    def test_events_report_start_and_die_with_the_container_labels(self, engine, image, net, names):
        name = names("ev")
        since = time.time() - 1
        engine.start(self.spec(name, image, net, self.serve_argv, stop_grace_period=1))
        engine.stop(name, 1)
        seen = list(engine.events({"kiln.env": name}, since=since, until=time.time() + 1))
        actions = [ev.action for ev in seen]
        assert "start" in actions and "die" in actions
        assert all(ev.name == name and ev.label("app") == "contract" for ev in seen)

    # --- images ----------------------------------------------------------------------------------

    def test_image_lookups(self, engine, image):
        image_id = engine.image_id(image)
        assert image_id is not None and image_id.startswith("sha256:")
        assert engine.image_id("kiln-contract/never:made") is None
        assert engine.find_image("kiln-contract/never:made", {}) is None
        assert "PATH" in engine.image_env(image_id)

    def test_pull_and_push_that_cannot_reach_a_registry_are_engine_errors(self, engine, image):
        with pytest.raises(EngineError):
            engine.pull("127.0.0.1:9/kiln-contract/never:1")
        with pytest.raises(EngineError):
            engine.push(engine.image_id(image), "127.0.0.1:9/kiln-contract/unreachable")
