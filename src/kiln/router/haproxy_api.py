"""HAProxy's runtime API: commands as data, one small client that sends them.

The functions that build commands are pure and golden-tested; RuntimeClient is the only code
that talks to the socket."""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import RouterError


@dataclass(frozen=True)
class ServerStat:
    backend: str
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, "no check"…
    current_sessions: int  # scur
    queued: int  # qcur
    total: int  # stot
    weight: int  # the weight kiln set (uweight), 0..256
    address: str
    responses: int = 0  # HTTP responses, all classes
    errors: int = 0  # 5xx responses
    response_ms: int = 0  # mean response time over the last 1024 requests (rtime)

    @property
    def serving(self) -> bool:
        # "UP 1/2" is UP and on its way down: still serving. A new server is DOWN until its
        # first check passes; "no check" serves without checks.
        return self.status.startswith("UP") or self.status == "no check"


FULL_WEIGHT = 100  # a server's share when it takes its full part of the traffic
POOL_MAX_CONN = 128  # idle connections HAProxy keeps to one instance for reuse
POOL_PURGE_MS = 1_000  # how often unused idle connections are closed (also what a server's removal may wait for)


# Requests see an instance die before its health checks do: consecutive connection failures or
# timeouts of live traffic take the server out at once (its checks bring it back if it was
# transient), instead of every request in the next check interval waiting out its connect.
OBSERVE = "observe layer4 error-limit 2 on-error mark-down"


def add_server(backend: str, server: str, address: str, port: int, inter_ms: int, weight: int = FULL_WEIGHT) -> list[str]:
    """A dynamic server starts in maintenance: add it, start its checks, then let traffic in.

    HAProxy 2.6 gives a server added at run time no pool of idle connections, so every request
    opened a new connection to the instance (~10x slower through the router, measured by the
    bench); `pool-max-conn` and `pool-purge-delay` give it the pool a configured server has."""
    return [
        f"add server {backend}/{server} {address}:{port} weight {weight} check inter {inter_ms} fall 2 rise 1 "
        f"{OBSERVE} pool-max-conn {POOL_MAX_CONN} pool-purge-delay {POOL_PURGE_MS}",
        f"enable health {backend}/{server}",
        f"enable server {backend}/{server}",
    ]


def set_weights(backend: str, weights: dict[str, int]) -> list[str]:
    """Heaviest first: requests arriving between two commands must always find a server with
    weight, so the servers taking traffic are raised before the others are lowered."""
    order = sorted(weights.items(), key=lambda item: (-item[1], item[0]))
    return [f"set server {backend}/{server} weight {weight}" for server, weight in order]


def drain_server(backend: str, server: str) -> list[str]:
    return [f"set server {backend}/{server} state drain"]


def stop_server(backend: str, server: str) -> list[str]:
    """For a dead server: no request goes there any more, and those stuck connecting to it are
    redispatched when their connect times out (a drained server would still take persistent ones)."""
    return [f"set server {backend}/{server} state maint"]


def remove_server(backend: str, server: str) -> list[str]:
    """Only a server in maintenance can be deleted; sessions still attached are cut first."""
    return [
        f"set server {backend}/{server} state maint",
        f"shutdown sessions server {backend}/{server}",
        f"del server {backend}/{server}",
    ]


def parse_stat(text: str) -> list[ServerStat]:
    """`show stat` CSV -> one ServerStat per server (frontends and backend totals skipped)."""
    body = text.lstrip("# ")
    out = []
    for row in csv.DictReader(io.StringIO(body)):
        if row.get("svname") in ("FRONTEND", "BACKEND") or not row.get("pxname"):
            continue
        responses = sum(_int(row.get(f"hrsp_{k}")) for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
        out.append(ServerStat(row["pxname"], row["svname"], row.get("status", ""), _int(row.get("scur")),
                              _int(row.get("qcur")), _int(row.get("stot")),
                              _int(row.get("uweight") or row.get("weight")), row.get("addr", ""),
                              responses, _int(row.get("hrsp_5xx")), _int(row.get("rtime"))))
    return out


def parse_conns(text: str) -> dict[str, int]:
    """`show servers conn BACKEND` -> server name -> connections carrying a request now (used_cur).

    This, not scur, tells when a drained server's in-flight work is done: scur also counts
    client sessions that are merely attached to it."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#"):
        return {}
    header = lines[0].lstrip("# ").split()
    out = {}
    for line in lines[1:]:
        fields = dict(zip(header, line.split(), strict=False))
        if "bkname/svname" in fields and "used_cur" in fields:
            out[fields["bkname/svname"].split("/", 1)[1]] = _int(fields["used_cur"])
    return out


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


_OK_REPLIES = ("", "New server registered.", "Server deleted.")


class RuntimeClient:
    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def ask(self, command: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterError(f"cannot reach HAProxy's admin socket {self.socket_path}: {exc}.",
                              "Is the router running? `kiln status` shows it; `kiln deploy` starts it.") from None
        return b"".join(chunks).decode(errors="replace").strip()

    def run(self, commands: list[str]) -> None:
        for command in commands:
            reply = self.ask(command)
            if reply not in _OK_REPLIES:
                raise RouterError(f"HAProxy refused `{command}`: {reply}")

    def run_at_once(self, commands: list[str]) -> None:
        """Several commands in one request, applied back to back (a traffic switch)."""
        if not commands:
            return
        reply = self.ask("; ".join(commands))
        if reply.strip():
            raise RouterError(f"HAProxy refused part of `{'; '.join(commands)}`: {reply}")

    def stats(self) -> list[ServerStat]:
        return parse_stat(self.ask("show stat"))

    def in_flight(self, backend: str) -> dict[str, int]:
        return parse_conns(self.ask(f"show servers conn {backend}"))
