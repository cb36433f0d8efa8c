"""HAProxy's static configuration for one environment. Pure: rendered once when the router
starts; from then on servers come and go through the runtime API, never by reload.

What comes from the spec: the port (an int), the bind address (an IP literal, spec/models.py),
the public service's name (the name rule: [a-z0-9-]) and the healthcheck's HTTP path (URL
characters only, spec/smoke.path_problem). The address and the path are written as escaped
HAProxy words all the same (`_word`), and a control character in anything written is refused
(RouterError): no spec value can add a line or a word to haproxy.cfg, even one recorded by an
older kiln that did not check it."""

from __future__ import annotations

import re

from kiln.errors import RouterError
from kiln.spec.resolve import EnvConfig, host_port

SOCKET_DIR = "/run/kiln"
SOCKET_NAME = "admin.sock"


PREVIEW_PORT = 8081  # inside the router container; published on the environment's preview_port
# Instances sit on the router's own bridge, where a connect takes well under a millisecond (the
# kernel completes it: the app need not be scheduled). A connect that has not succeeded within this
# is to an instance that died (its address vanished, nothing answers): it is retried on another
# server, so a short limit makes a death cheap. 1 s here kept requests stuck for 1 s after a kill.
CONNECT_TIMEOUT = 0.1


# HAProxy (2.0+): "disables any attempt to retry the request if it fails for any other reason
# than a connection failure". METH_GET matches GET and HEAD.
NO_UNSAFE_L7_RETRY = "    http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _word(value: str, what: str) -> str:
    """`value` as one HAProxy config word: a control character is refused, and the characters
    HAProxy's parser gives a meaning (space, quotes, backslash, '#', '$') are backslash-escaped."""
    if _CONTROL.search(value) or not value:
        raise RouterError(f"refusing to write {what} {value[:80]!r} into haproxy.cfg: it is empty or holds a control character.",
                          "Fix it in kiln.yaml (kiln validate checks it).")
    return re.sub(r"""([\s'"\\#$])""", r"\\\1", value)


def backend_name(service: str, preview: bool = False) -> str:
    return f"svc-{service}-preview" if preview else f"svc-{service}"


def render_config(cfg: EnvConfig, on_host: bool = False) -> str:
    """`on_host`: the router runs on the host's network and listens on the environment's own
    bind:port (and preview port); else on fixed ports inside its container, which the engine publishes."""
    svc = cfg.public_service
    public = _word(host_port(cfg.bind, cfg.port), "the bind address") if on_host else f":{cfg.port}"
    preview_bind = _word(host_port(cfg.bind, cfg.preview_port or 0), "the bind address") if on_host else f":{PREVIEW_PORT}"
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
        # abrupt instance death cost no request. Only a connection failure is retried for every
        # method (the server cannot have seen the request); after an empty response or a response
        # timeout it may have run it, so only safe methods are replayed then (each backend's
        # `disable-l7-retry` rule): a POST, PUT, PATCH or DELETE never runs twice.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend public",
        f"    bind {public}",
        "    http-request return status 200 content-type text/plain string ok if { path /_kiln/router }",
    ]
    if svc is None:
        lines.append("    http-request return status 503 content-type text/plain string \"no public service\"")
        return "\n".join(lines) + "\n"
    lines.append(f"    default_backend {backend_name(svc.name)}")
    if cfg.preview_port:
        # Blue-green: the new set answers here, and only here, until it is switched in.
        lines += ["", "frontend preview", f"    bind {preview_bind}", f"    default_backend {backend_name(svc.name, True)}"]
    for preview in (False, True) if cfg.preview_port else (False,):
        lines += ["", f"backend {backend_name(svc.name, preview)}", "    balance roundrobin", NO_UNSAFE_L7_RETRY]
        hc = svc.healthcheck
        if hc is not None and hc.kind == "http":
            lines += [f"    option httpchk GET {_word(hc.http or '/', 'the healthcheck path')}",
                      "    http-check expect status 200-399"]
        if hc is not None:
            # A check may take the healthcheck's timeout (without this, HAProxy allows it only its
            # interval): a busy instance answering slowly is not taken out of the rotation.
            lines.append(f"    timeout check {int(hc.timeout * 1000)}ms")
    return "\n".join(lines) + "\n"
