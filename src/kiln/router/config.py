"""HAProxy's static configuration for one environment. Pure: rendered once when the router
starts; from then on servers come and go through the runtime API, never by reload."""

from __future__ import annotations

from kiln.spec.resolve import EnvConfig

SOCKET_DIR = "/run/kiln"
SOCKET_NAME = "admin.sock"


PREVIEW_PORT = 8081  # inside the router container; published on the environment's preview_port
# Instances sit on the router's own bridge, where a connect takes well under a millisecond. A
# connect that has not succeeded within this is to an instance that died (its address vanished,
# nothing answers): it is retried on another server, so a short limit makes a death cheap.
CONNECT_TIMEOUT = 1.0


def backend_name(service: str, preview: bool = False) -> str:
    return f"svc-{service}-preview" if preview else f"svc-{service}"


def render_config(cfg: EnvConfig) -> str:
    svc = cfg.public_service
    lines = [
        "# written by kiln; servers are managed at run time through the admin socket",
        "global",
        "    maxconn 4096",
        f"    stats socket {SOCKET_DIR}/{SOCKET_NAME} mode 600 level admin",
        "    stats timeout 30s",
        "    hard-stop-after 30s",
        "",
        "defaults",
        "    mode http",
        f"    timeout connect {int(CONNECT_TIMEOUT * 1000)}ms",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 10s",
        # A request whose server vanished is replayed on another one: this is what makes an
        # abrupt instance death cost no request.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend public",
        f"    bind :{cfg.port}",
        "    http-request return status 200 content-type text/plain string ok if { path /_kiln/router }",
    ]
    if svc is None:
        lines.append("    http-request return status 503 content-type text/plain string \"no public service\"")
        return "\n".join(lines) + "\n"
    lines.append(f"    default_backend {backend_name(svc.name)}")
    if cfg.preview_port:
        # Blue-green: the new set answers here, and only here, until it is switched in.
        lines += ["", "frontend preview", f"    bind :{PREVIEW_PORT}", f"    default_backend {backend_name(svc.name, True)}"]
    for preview in (False, True) if cfg.preview_port else (False,):
        lines += ["", f"backend {backend_name(svc.name, preview)}", "    balance roundrobin"]
        hc = svc.healthcheck
        if hc is not None and hc.kind == "http":
            lines += [f"    option httpchk GET {hc.http}", "    http-check expect status 200-399"]
    return "\n".join(lines) + "\n"
