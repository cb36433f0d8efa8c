"""Health probes from kiln to an instance: an HTTP GET or a TCP connect. Side effects only."""

from __future__ import annotations

import http.client
import socket

from kiln.providers.base import ContainerFacts
from kiln.spec.models import HealthCheck


def instance_ready(c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool:
    """A service's readiness check against one instance reachable at its address, right now."""
    if not c.running:
        return False
    if check is None:
        return True
    if check.kind == "command":
        return c.health == "healthy"  # run by the engine inside the instance
    if not c.ip or port is None:
        return False
    if check.kind == "http":
        return http_ok(c.ip, port, check.http or "/", check.timeout)
    return tcp_ok(c.ip, port, check.timeout)


def http_ok(address: str, port: int, path: str, timeout: float) -> bool:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "kiln-healthcheck"})
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def tcp_ok(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(address: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """(status, body) of one GET; raises OSError or HTTPException when there is no answer."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "kiln-smoke"})
        resp = conn.getresponse()
        return resp.status, resp.read(65536).decode(errors="replace")
    finally:
        conn.close()
