"""`kiln agent install`: run `kiln agent` for one app as a systemd service, so that after a host
or dockerd restart the app comes back by itself. The unit's text is rendered here, purely, from
the paths and settings of the kiln that runs the command (its Python, the spec, KILN_HOME, the
engine and ledger it uses); `install` writes it and enables it with systemctl where systemd runs,
and otherwise says what to do instead."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from kiln.errors import KilnError, UsageError

SYSTEMD_RUNNING = Path("/run/systemd/system")  # exists only where systemd is PID 1 (sd_booted())
UNIT_DIR = Path("/etc/systemd/system")
# Settings the agent must see as the command did. KILN_LEDGER_URL is written only when it holds
# no password (a unit file is world-readable); KILN_LEDGER_URL_FILE is the way for one that does.
PASSED_ON = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "KILN_LEDGER_URL", "KILN_LEDGER_URL_FILE",
             "KILN_EXTRA_LABELS", "PYTHONPATH")


@dataclass(frozen=True)
class AgentUnit:
    app: str
    spec: Path  # absolute
    python: str  # absolute: the interpreter this kiln runs on (`python -m kiln` finds the same kiln)
    home: Path  # KILN_HOME, absolute
    environment: dict[str, str] = field(default_factory=dict)  # more KEY=value lines (PASSED_ON)
    envs: tuple[str, ...] = ()  # --env options; none: every environment of the spec

    @property
    def name(self) -> str:
        return unit_name(self.app)

    def argv(self) -> list[str]:
        return [self.python, "-m", "kiln", "agent", "-f", str(self.spec), *(a for e in self.envs for a in ("-e", e))]


def unit_name(app: str) -> str:
    return f"kiln-agent-{app}.service"


def settings_of(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `environ` the agent needs too (PASSED_ON), refusing a ledger URL with a password."""
    out = {k: environ[k] for k in PASSED_ON if environ.get(k)}
    where = password_in(out.get("KILN_LEDGER_URL", ""))
    if where:
        raise UsageError(f"KILN_LEDGER_URL holds a password ({where}), and a unit file is readable by every user.",
                         "Put the URL in a file only root reads (mode 0600) and set KILN_LEDGER_URL_FILE to its path "
                         "instead, then run `kiln agent install` again.")
    return out


# A parameter naming a password, in a URL's query or libpq's keyword form ("host=db password=x"):
# libpq's password and sslpassword, ODBC's pwd, any other *password*.
_PASSWORD_KEY = re.compile(r"(?:^|[\s?&;])([\w.-]*password[\w.-]*|pwd)\s*=", re.IGNORECASE)


def password_in(url: str) -> str | None:
    """Where a ledger URL holds a password (its user part, or the parameter's name); None: nowhere."""
    for text in (url, unquote(url)):  # a parameter's name may be percent-encoded
        if found := _PASSWORD_KEY.search(text):
            return f"the parameter {found.group(1)}"
    try:
        parsed = make_url(url)  # the ledger's own parser: it finds a password wherever SQLAlchemy would
    except ArgumentError:  # not a URL (libpq's keyword form): checked above
        return None
    # A ':' in the decoded user name is a password the URL percent-encoded, or one about to be misread.
    if parsed.password is not None or ":" in (parsed.username or ""):
        return "user:password@"
    return None


def _quote(value: str, what: str) -> str:
    """One word of a unit's ExecStart= or Environment= line: specifiers (%) and variables ($)
    taken literally, quoted when it holds a space or a quote (systemd.syntax(7))."""
    if any(ch in value for ch in "\n\r\0"):
        raise UsageError(f"{what} holds a line break or NUL, which a unit file cannot carry: {value!r}.")
    text = value.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text) or not text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render(unit: AgentUnit) -> str:
    """The unit's text (docs/kiln-agent.service, made for one app and this host's paths)."""
    env_lines = [f"Environment={_quote(f'{k}={v}', k)}"
                 for k, v in [("KILN_HOME", str(unit.home)), *sorted(unit.environment.items())]]
    exec_start = " ".join(_quote(a, "the agent's command") for a in unit.argv())
    return "\n".join([
        f"# {unit.name}: `kiln agent` for {unit.app} ({unit.spec}), written by `kiln agent install`.",
        "# It keeps every environment of the app at its current release, also after a host or dockerd",
        "# restart. Another host (or unit) may run an agent for the same app: one leads each environment.",
        "[Unit]",
        f"Description=kiln agent for {unit.app} (self-healing, drift replacement)",
        # Wants, not Requires: a dockerd restart must not stop the agent, which reconnects and then
        # restores the instances that died with the engine.
        "Wants=docker.service network-online.target",
        "After=docker.service network-online.target",
        "",
        "[Service]",
        f"WorkingDirectory={_quote(str(unit.spec.parent), 'the spec directory')}",
        *env_lines,
        f"ExecStart={exec_start}",
        "# SIGTERM ends the current pass and releases the leases; a crashed agent is restarted.",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "Restart=always",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def elsewhere(unit: AgentUnit) -> str:
    """What to do where systemd does not run."""
    env = " ".join(_quote(f"{k}={v}", k) for k, v in [("KILN_HOME", str(unit.home)), *sorted(unit.environment.items())])
    return (f"systemd is not running on this host ({SYSTEMD_RUNNING} is missing), so nothing was installed. "
            "Run the agent under whatever starts services here, so that it starts at boot and is restarted when "
            f"it exits (runit, s6, OpenRC, supervisord…): `env {env} {' '.join(unit.argv())}`. "
            "The unit printed above is what systemd would run.")


@dataclass(frozen=True)
class Installed:
    path: Path
    commands: list[tuple[str, ...]]


def install(unit: AgentUnit, run: Callable[[Sequence[str]], object], unit_dir: Path = UNIT_DIR) -> Installed:
    """Write the unit, reload systemd and enable and start it (`systemctl enable --now`).
    `run` is process.run (a fake in tests); a failing systemctl is a KilnError with its output."""
    path = unit_dir / unit.name
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(render(unit))
        path.chmod(0o644)
    except PermissionError:
        raise UsageError(f"cannot write {path}: permission denied.",
                         "Run `kiln agent install` as root (sudo), or --print the unit and install it yourself.") from None
    except OSError as exc:
        raise KilnError(f"cannot write {path}: {exc.strerror}.") from None
    commands = [("systemctl", "daemon-reload"), ("systemctl", "enable", "--now", unit.name)]
    for argv in commands:
        result = run(argv)
        code = getattr(result, "code", 0)
        if code != 0:
            err = (getattr(result, "stderr", "") or "").strip()
            raise KilnError(f"`{' '.join(argv)}` exited {code}: {err[-800:] or 'no output'}.",
                            f"The unit is written ({path}); see `journalctl -u {unit.name}`.")
    return Installed(path, commands)
