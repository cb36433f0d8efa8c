"""One dockerd through the Docker Engine API (the `docker` SDK): the images, networks, containers,
events and logs every engine of containers and launchers needs. Not a provider itself: the
Docker, Swarm and QEMU providers each hold a `DockerApi` and delegate to it explicitly what they
provide as it does.

Every engine failure becomes an EngineError naming what failed and what to do."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from requests.exceptions import RequestException

from kiln.errors import BuildError, EngineError, PortInUse
from kiln.probe import http_get, instance_ready
from kiln.providers.base import (
    ContainerDetails,
    ContainerFacts,
    ContainerSpec,
    EngineEvent,
    Finished,
    Limits,
    check_owner,
)
from kiln.secretref import Lookup, resolve
from kiln.spec.models import HealthCheck

_NS = 1_000_000_000
MAX_LINE = 64 * 1024  # the longest piece of output run_streamed holds before handing it on


@contextlib.contextmanager
def engine_call(action: str) -> Iterator[None]:
    try:
        yield
    except NotFound:
        raise  # callers that expect it (stop, remove) suppress it; it is not an engine failure
    except APIError as exc:
        text = exc.explanation if isinstance(exc.explanation, str) else str(exc)
        if "port is already allocated" in text or "address already in use" in text:
            raise PortInUse(f"{action}: the port is already taken ({text}).",
                            "Free the port or choose another 'port' for this environment in kiln.yaml.") from None
        raise EngineError(f"{action}: the Docker engine said: {text}") from None
    except DockerException as exc:
        raise EngineError(f"{action}: {exc}") from None
    except RequestException as exc:
        raise EngineError(f"{action}: lost the connection to the Docker engine ({type(exc).__name__}).",
                          "Check that dockerd is running, then run the command again.") from None


class DockerApi:
    """One Docker engine (DOCKER_HOST, else the local socket): images, networks, containers."""

    def __init__(self, extra_labels: dict[str, str] | None = None, secrets: Lookup | None = None) -> None:
        self.extra_labels = dict(extra_labels or {})
        self.secrets: Lookup = secrets or (lambda _name: None)  # values of `secret:NAME` references
        try:
            # No ping: with no API version given, the client asks the engine for its version first,
            # which fails the same way on an unreachable engine (one round trip fewer per command).
            self.client = docker.from_env(timeout=120)
        except (DockerException, RequestException):
            where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            raise EngineError(
                f"cannot reach the Docker engine at {where}.",
                "Start it (`systemctl start docker`, or `dockerd &`), or point DOCKER_HOST at a running engine.",
            ) from None

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    # --- images -------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        try:
            with engine_call(f"looking up image {ref}"):
                found: str = self.client.images.get(ref).id
                return found
        except ImageNotFound:
            return None

    def image_env(self, image: str) -> dict[str, str]:
        """The environment an image gives every container (the engine merges it into theirs)."""
        with engine_call(f"inspecting image {image[:19]}"):
            config = self.api.inspect_image(image).get("Config") or {}
        return _env(config.get("Env"))

    def find_image(self, tag: str, labels: dict[str, str]) -> str | None:
        """The image tagged `tag`, if it carries `labels` (children inherit labels, tags not).
        One inspect of the tag: listing with filters costs ~0.1 s on an engine with many images."""
        try:
            with engine_call(f"looking up image {tag}"):
                attrs = self.api.inspect_image(tag)
        except NotFound:
            return None
        have = (attrs.get("Config") or {}).get("Labels") or {}
        return attrs["Id"] if all(have.get(k) == v for k, v in labels.items()) else None

    def images(self, labels: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        """(image id, tags) of every image carrying `labels`."""
        with engine_call("listing images"):
            found = self.client.images.list(filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [(i.id, tuple(i.tags)) for i in found]

    def remove_image(self, image: str) -> None:
        with contextlib.suppress(NotFound), engine_call(f"removing image {image[:19]}"):
            self.client.images.remove(image, force=True)

    def import_rootfs(self, tarball: Path, tag: str, labels: dict[str, str], changes: list[str]) -> str:
        repo, _, version = tag.partition(":")
        label_changes = [f"LABEL {k}={json.dumps(v)}" for k, v in labels.items()]
        with engine_call(f"importing {tag}"):
            self.api.import_image_from_file(str(tarball), repository=repo, tag=version,
                                            changes=changes + label_changes)
        image = self.image_id(tag)
        if image is None:
            raise BuildError(f"the engine did not create {tag} from {tarball}")
        return image

    def export_rootfs(self, image: str, dest: Path) -> None:
        """The image's filesystem, flattened, as a tar file at `dest` (through a container never started)."""
        with engine_call(f"exporting the filesystem of {image[:19]}"):
            container = self.client.containers.create(image, command=["/bin/true"], network_disabled=True,
                                                      labels=self.extra_labels)
            try:
                with open(dest, "wb") as fh:
                    for chunk in container.export():
                        fh.write(chunk)
            finally:
                container.remove(force=True)

    def build(self, context: BinaryIO, dockerfile: str, tag: str, args: dict[str, str],
              labels: dict[str, str], on_line: Callable[[str], None]) -> str:
        tail: list[str] = []
        with engine_call(f"building {tag}"):
            for chunk in self.api.build(fileobj=context, custom_context=True, encoding="identity",
                                        dockerfile=dockerfile, tag=tag, buildargs=args, labels=labels,
                                        rm=True, forcerm=True, decode=True):
                if "error" in chunk:
                    detail = "\n".join(tail[-8:])
                    raise BuildError(f"the build failed: {chunk['error'].strip()}",
                                     f"Last output:\n{detail}" if detail else None)
                line = (chunk.get("stream") or "").rstrip()
                if line:
                    tail = (tail + [line])[-20:]
                    on_line(line)
        image = self.image_id(tag)
        if image is None:
            raise BuildError(f"the build of {tag} finished without an image")
        return image

    def push(self, image: str, repository: str) -> str:
        """Tag `image` into `repository` (host/path, no tag) and push it; returns `repository@sha256:…`,
        the reference every node pulls the very same bytes by."""
        tag = image.removeprefix("sha256:")[:16]
        digest = None
        try:
            with engine_call(f"pushing {repository}:{tag}"):
                self.api.tag(image, repository, tag)
        except NotFound:
            raise EngineError(f"pushing {repository}:{tag}: this engine has no image {image[:19]}.") from None
        with engine_call(f"pushing {repository}:{tag}"):
            for chunk in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise EngineError(f"pushing {repository}:{tag}: {chunk['error'].strip()}",
                                      "Check that the registry is reachable from this engine.")
                digest = (chunk.get("aux") or {}).get("Digest") or digest
        if digest is None:
            raise EngineError(f"pushing {repository}:{tag}: the registry reported no digest")
        return f"{repository}@{digest}"

    def pull(self, ref: str) -> str:
        """Pull `ref` (repo:tag or repo@sha256:…) unless the engine has it; returns the image id."""
        found = self.image_id(ref)
        if found:
            return found
        repo, sep, rest = ref.partition("@")
        if not sep:
            repo, _, rest = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        with engine_call(f"pulling {ref}"):
            self.api.pull(repo, tag=rest, stream=False)
        found = self.image_id(ref)
        if found is None:
            raise EngineError(f"pulling {ref}: the engine has no such image afterwards")
        return found

    # --- networks -------------------------------------------------------------------------

    def _networks(self, name: str) -> list[Any]:
        """The network called exactly `name` (the engine's name filter matches parts of names)."""
        return [n for n in self.client.networks.list(names=[name]) if n.name == name]

    def ensure_network(self, name: str, labels: dict[str, str], overlay: bool = False) -> dict[str, Any] | None:
        """Make the network `name` (a bridge, or with `overlay` an attachable Swarm overlay) unless
        it exists: then NameTaken if it is another environment's, else its attributes."""
        with engine_call(f"creating network {name}"):
            found = self._networks(name)
            if not found:
                if overlay:
                    self.client.networks.create(name, driver="overlay", attachable=True, scope="swarm",
                                                labels={**labels, **self.extra_labels})
                else:
                    self.client.networks.create(name, driver="bridge", labels={**labels, **self.extra_labels})
                return None
        if not found[0].attrs.get("Driver"):
            # A Swarm manager lists an overlay created a moment ago without its driver; its
            # inspection has it.
            with engine_call(f"inspecting network {name}"):
                found[0].reload()
        attrs: dict[str, Any] = found[0].attrs
        check_owner("network", name, attrs.get("Labels") or {}, labels)
        return attrs

    def remove_network(self, name: str, labels: dict[str, str] | None = None) -> None:
        with engine_call(f"removing network {name}"):
            for net in self._networks(name):
                have = net.attrs.get("Labels") or {}
                if labels and any(have.get(k) != v for k, v in labels.items()):
                    continue  # another environment's, by the same name
                try:
                    net.remove()
                except NotFound:
                    pass
                except APIError as exc:  # a Swarm overlay the manager listed a moment ago, gone meanwhile
                    if "not found" not in str(exc):
                        raise

    # --- containers -----------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> ContainerFacts:
        # The only place a secret's value is used: handed to the engine as the container starts.
        kwargs = create_args(spec, self.extra_labels, resolve(spec.environment, self.secrets))
        try:
            with engine_call(f"creating container {spec.name}"):
                container = self.client.containers.create(spec.image, **kwargs)
        except NotFound as exc:  # its image or network
            raise EngineError(f"creating container {spec.name}: {exc.explanation or exc}") from None
        try:
            with engine_call(f"starting container {spec.name}"):
                container.start()
        except (EngineError, NotFound) as exc:
            with contextlib.suppress(DockerException):
                container.remove(force=True)
            if isinstance(exc, NotFound):  # its network is gone
                raise EngineError(f"starting container {spec.name}: {exc.explanation or exc}") from None
            raise
        facts = self.container(spec.name)
        if facts is None:
            raise EngineError(f"container {spec.name} vanished right after it started.",
                              "Something else removes containers on this engine; run the command again.")
        return facts

    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]:
        with engine_call("listing containers"):
            # A container removed between the listing and its inspection (a rollout retiring it) is left out,
            # not an error: `kiln status` and the API answered 500 meanwhile (bench/results/soak.md).
            found = self.client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]},
                                                ignore_removed=True)
        return [_facts(c.attrs) for c in found]

    def container(self, name: str) -> ContainerFacts | None:
        try:
            with engine_call(f"inspecting container {name}"):
                return _facts(self.api.inspect_container(name))
        except NotFound:
            return None

    def logs(self, name: str, tail: int = 20) -> str:
        try:
            said: bytes = self.api.logs(name, tail=tail)
            return said.decode(errors="replace").strip()
        except (DockerException, RequestException):
            return ""

    def stop(self, name: str, grace: float) -> None:
        with contextlib.suppress(NotFound), engine_call(f"stopping container {name}"):
            self.api.stop(name, timeout=max(1, round(grace)))

    def remove(self, name: str) -> None:
        with contextlib.suppress(NotFound), engine_call(f"removing container {name}"):
            self.api.remove_container(name, force=True, v=True)

    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]:
        """Run a one-off container to its end: (exit code or None on timeout, its output)."""
        self.start(spec)
        try:
            with engine_call(f"waiting for {spec.name}"):
                code = self.api.wait(spec.name, timeout=timeout)["StatusCode"]
        except EngineError:
            code = None  # the wait timed out (or the engine went away); the container is removed below
        try:
            return code, self.logs(spec.name, tail=200)
        finally:
            self.remove(spec.name)

    def run_streamed(self, spec: ContainerSpec, on_line: Callable[[str], None], timeout: float,
                     cancelled: Callable[[], bool]) -> Finished:
        """Run a container to its end, handing each output line to `on_line`; kill it when
        `timeout` passes or `cancelled()` turns true. The container is left for the caller to remove."""
        self.start(spec)
        done = threading.Event()
        why: list[str] = []

        def watchdog() -> None:
            deadline = time.monotonic() + timeout
            while not done.wait(0.5):
                late = time.monotonic() > deadline
                if late or cancelled():
                    why.append("timeout" if late else "cancelled")
                    with contextlib.suppress(DockerException, RequestException):
                        self.api.kill(spec.name)
                    return

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        try:
            with engine_call(f"following {spec.name}"):
                partial = ""
                for chunk in self.api.logs(spec.name, stream=True, follow=True):
                    partial += chunk.decode(errors="replace")
                    *lines, partial = partial.split("\n")
                    for line in lines:
                        on_line(line)
                    while len(partial) > MAX_LINE:  # output that never ends its line: handed on in pieces
                        on_line(partial[:MAX_LINE])
                        partial = partial[MAX_LINE:]
                if partial:
                    on_line(partial)
                code = self.api.wait(spec.name, timeout=60)["StatusCode"]
        finally:
            done.set()
            guard.join()
        return Finished(None, why[0]) if why else Finished(code)

    # --- kiln's own requests to instances: straight to their address on the environment network --

    def probe(self, c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool:
        return instance_ready(c, check, port)

    def get(self, c: ContainerFacts, port: int, path: str, timeout: float) -> tuple[int, str]:
        if not c.ip:
            raise OSError(f"{c.name} has no address")
        return http_get(c.ip, port, path, timeout)

    def details(self, name: str) -> ContainerDetails | None:
        try:
            with engine_call(f"inspecting container {name}"):
                attrs = self.api.inspect_container(name)
        except NotFound:
            return None
        host, config = attrs.get("HostConfig") or {}, attrs.get("Config") or {}
        mounts = attrs.get("Mounts") or []
        return ContainerDetails(
            env=_env(config.get("Env")),
            read_only=bool(host.get("ReadonlyRootfs")),
            cap_drop=tuple(host.get("CapDrop") or ()),
            cap_add=tuple(host.get("CapAdd") or ()),
            security_opt=tuple(host.get("SecurityOpt") or ()),
            user=config.get("User") or "",
            privileged=bool(host.get("Privileged")),
            # --tmpfs mounts are in HostConfig.Tmpfs; a Swarm task's tmpfs mounts are Mounts of type tmpfs.
            tmpfs=tuple(sorted({*(host.get("Tmpfs") or {}), *(m.get("Destination", "") for m in mounts if m.get("Type") == "tmpfs")})),
            mounts=tuple(f"{m.get('Source', '')}:{m.get('Destination', '')}" for m in mounts if m.get("Type") != "tmpfs"),
            limits=Limits(memory=host.get("Memory") or 0, cpus=(host.get("NanoCpus") or 0) / _NS,
                          pids=max(host.get("PidsLimit") or 0, 0)),  # none: 0, null or -1
        )

    def pid(self, name: str) -> int:
        """The host pid of the container's first process; 0 unless it runs."""
        try:
            with engine_call(f"inspecting container {name}"):
                return int(self.api.inspect_container(name)["State"].get("Pid") or 0)
        except NotFound:
            return 0

    def changes(self, name: str) -> list[str]:
        """`docker diff`: paths changed in the container's writable layer, as "A /path" (added),
        "C /path" (changed) or "D /path" (deleted)."""
        try:
            with engine_call(f"reading the changes of {name}"):
                found = self.api.diff(name) or []
        except NotFound:
            return []
        return [f"{'CAD'[c['Kind']]} {c['Path']}" for c in found]

    def events(self, labels: dict[str, str], since: float | None = None,
               until: float | None = None) -> Iterator[EngineEvent]:
        """Container events of containers with `labels`; without `until`, a stream that lasts until
        the engine goes away (then EngineError)."""
        filters = {"type": "container", "label": [f"{k}={v}" for k, v in labels.items()]}
        with engine_call("watching engine events"):
            for raw in self.api.events(since=_stamp(since), until=_stamp(until), filters=filters, decode=True):
                yield parse_event(raw)


def create_args(spec: ContainerSpec, extra_labels: dict[str, str], environment: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of `containers.create(spec.image, **…)` for `spec`: hardening, limits, health
    check, published ports, binds, restart policy, network aliases. Pure; `environment` is spec.environment with
    its secret references already resolved."""
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "labels": {**spec.labels, **extra_labels},
        "network": spec.network,
        "environment": environment,
        "read_only": spec.hardening.read_only,
        "tmpfs": {path: "rw,nosuid,nodev,size=64m" for path in spec.hardening.writable},
        "cap_drop": ["ALL"],
        "cap_add": list(spec.hardening.cap_add) or None,
        "security_opt": ["no-new-privileges:true"] if spec.hardening.no_new_privileges else None,
        "init": True,
        "stop_signal": "SIGTERM",
        "detach": True,
        "mem_limit": spec.limits.memory,
        "memswap_limit": spec.limits.memory,  # the same: no swap beyond the limit
        "nano_cpus": round(spec.limits.cpus * _NS),
        "pids_limit": spec.limits.pids,
    }
    if spec.command:
        kwargs["command"] = list(spec.command)
    if spec.hardening.user:
        kwargs["user"] = spec.hardening.user
    if spec.health_command:
        kwargs["healthcheck"] = {
            "test": ["CMD", *spec.health_command],
            "interval": int(spec.health_interval * _NS),
            "timeout": int(spec.health_timeout * _NS),
            "retries": 1,
        }
    if spec.publish:
        kwargs["ports"] = {f"{cport}/tcp": hostport for cport, hostport in spec.publish.items()}
    if spec.binds or spec.ro_binds:
        kwargs["volumes"] = {**{host: {"bind": inner, "mode": "rw"} for host, inner in spec.binds.items()},
                             **{host: {"bind": inner, "mode": "ro"} for host, inner in spec.ro_binds.items()}}
    if spec.devices:
        kwargs["devices"] = [f"{d}:{d}:rwm" for d in spec.devices]
    if spec.restart:
        kwargs["restart_policy"] = {"Name": "unless-stopped"}
    if spec.aliases:
        kwargs["networking_config"] = {spec.network: {"Aliases": list(spec.aliases)}}
    return kwargs


def parse_event(raw: dict[str, Any]) -> EngineEvent:
    """One decoded engine event (a JSON line of /events) -> EngineEvent: "health_status: healthy"
    splits into action and detail; the container's name leaves the attributes (the labels)."""
    action, _, detail = (raw.get("Action") or raw.get("status") or "").partition(":")
    attrs = dict((raw.get("Actor") or {}).get("Attributes") or {})
    return EngineEvent(action.strip(), detail.strip(), attrs.pop("name", ""), attrs,
                       raw.get("timeNano", 0) / _NS or float(raw.get("time", 0)))


def _stamp(at: float | None) -> str | None:
    """The engine's timestamp format: seconds, then nanoseconds as 9 digits."""
    if at is None:
        return None
    ns = round(at * _NS)
    return f"{ns // _NS}.{ns % _NS:09d}"


def _env(pairs: list[str] | None) -> dict[str, str]:
    return dict(p.partition("=")[::2] for p in pairs or ())


def _facts(attrs: dict[str, Any]) -> ContainerFacts:
    state = attrs.get("State", {})
    config = attrs.get("Config", {})
    networks = attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
    ip = next((n.get("IPAddress") for name, n in networks.items() if name.startswith("kiln-") and n.get("IPAddress")), None)
    health = (state.get("Health") or {}).get("Status")
    return ContainerFacts(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        image=attrs["Image"],
        labels=config.get("Labels") or {},
        state=state.get("Status", "unknown"),
        health=health,
        ip=ip,
        exit_code=state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None,
    )

