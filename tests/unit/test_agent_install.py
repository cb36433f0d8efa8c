"""`kiln agent install`: the unit's text as pure code, writing and enabling it with a fake
systemctl, and the CLI where systemd does not run (this machine's case: printed, exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.agent import install as inst
from kiln.errors import KilnError, UsageError
from kiln.process import Result
from unit.cli_inproc import run_kiln

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello" / "kiln.yaml"


def unit(**kw) -> inst.AgentUnit:
    base = {"app": "hello", "spec": Path("/srv/hello/kiln.yaml"), "python": "/opt/kiln/.venv/bin/python",
            "home": Path("/var/lib/kiln")}
    return inst.AgentUnit(**{**base, **kw})


def lines(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_the_unit_runs_this_kiln_on_the_spec_with_its_home_and_restarts():
    text = inst.render(unit(envs=("production",), environment={"DOCKER_HOST": "unix:///run/docker.sock"}))
    assert lines(text, "ExecStart") == ["/opt/kiln/.venv/bin/python -m kiln agent -f /srv/hello/kiln.yaml -e production"]
    assert lines(text, "Environment") == ["KILN_HOME=/var/lib/kiln", "DOCKER_HOST=unix:///run/docker.sock"]
    assert lines(text, "WorkingDirectory") == ["/srv/hello"]
    assert lines(text, "Restart") == ["always"] and lines(text, "WantedBy") == ["multi-user.target"]
    # Wants, not Requires: stopping dockerd must not stop the agent that brings the app back after it
    assert lines(text, "Wants") == ["docker.service network-online.target"] and "Requires=" not in text
    assert lines(text, "After") == ["docker.service network-online.target"]
    assert inst.unit_name("hello") == "kiln-agent-hello.service"


def test_paths_with_spaces_percent_and_dollar_are_taken_literally():
    text = inst.render(unit(spec=Path("/srv/my app/100%/kiln.yaml"), home=Path("/var/lib/$kiln")))
    assert lines(text, "ExecStart") == ['/opt/kiln/.venv/bin/python -m kiln agent -f "/srv/my app/100%%/kiln.yaml"']
    assert lines(text, "Environment") == ["KILN_HOME=/var/lib/$$kiln"]
    assert lines(text, "WorkingDirectory") == ['"/srv/my app/100%%"']


def test_a_line_break_cannot_reach_the_unit():
    with pytest.raises(UsageError, match="line break"):
        inst.render(unit(spec=Path("/srv/x\n[Service]\nExecStartPre=/bin/evil/kiln.yaml")))


def test_settings_passed_on_and_a_ledger_password_refused():
    env = {"DOCKER_HOST": "tcp://m:2376", "KILN_LEDGER_URL": "sqlite:////var/lib/kiln/l.db", "HOME": "/root",
           "KILN_SECRET_DB": "s3cret", "KILN_EXTRA_LABELS": ""}
    assert inst.settings_of(env) == {"DOCKER_HOST": "tcp://m:2376", "KILN_LEDGER_URL": "sqlite:////var/lib/kiln/l.db"}
    with pytest.raises(UsageError, match="password") as err:
        inst.settings_of({"KILN_LEDGER_URL": "postgresql+psycopg://kiln:pw@db/kiln"})
    assert "KILN_LEDGER_URL_FILE" in (err.value.hint or "")
    assert inst.settings_of({"KILN_LEDGER_URL_FILE": "/etc/kiln/url"}) == {"KILN_LEDGER_URL_FILE": "/etc/kiln/url"}


def test_install_writes_the_unit_then_reloads_and_enables_it(tmp_path):
    calls = []
    done = inst.install(unit(), lambda argv: calls.append(tuple(argv)) or Result(tuple(argv), 0, "", ""), tmp_path)
    assert done.path == tmp_path / "kiln-agent-hello.service"
    assert done.path.read_text() == inst.render(unit())
    assert done.path.stat().st_mode & 0o777 == 0o644
    assert calls == [("systemctl", "daemon-reload"), ("systemctl", "enable", "--now", "kiln-agent-hello.service")]


def test_a_failing_systemctl_is_a_clean_error(tmp_path):
    def run(argv):
        return Result(tuple(argv), 1 if "enable" in argv else 0, "", "Failed to enable unit: Access denied")
    with pytest.raises(KilnError, match="Access denied") as err:
        inst.install(unit(), run, tmp_path)
    assert "journalctl -u kiln-agent-hello.service" in (err.value.hint or "")


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "KILN_HOME": str(tmp_path / "home"), "NO_COLOR": "1", "COLUMNS": "200",
            "PYTHONPATH": str(Path(inst.__file__).resolve().parents[2])}  # this kiln, wherever the test runs from


def test_cli_without_systemd_prints_the_unit_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(inst, "SYSTEMD_RUNNING", tmp_path / "no-systemd")
    r = run_kiln(["agent", "install", "-f", str(EXAMPLE), "--unit-dir", str(tmp_path / "units")], cwd=tmp_path,
                 env=_env(tmp_path))
    assert r.returncode == 1
    assert f"-m kiln agent -f {EXAMPLE}" in r.stdout and f"KILN_HOME={tmp_path / 'home'}" in r.stdout
    assert "systemd is not running on this host" in r.stderr and "nothing was installed" in r.stderr
    assert not (tmp_path / "units").exists()


def test_cli_with_systemd_installs_and_enables(tmp_path, monkeypatch):
    monkeypatch.setattr(inst, "SYSTEMD_RUNNING", tmp_path)
    calls = []
    monkeypatch.setattr("kiln.process.run", lambda argv, **kw: calls.append(tuple(argv)) or Result(tuple(argv), 0, "", ""))
    r = run_kiln(["agent", "install", "-f", str(EXAMPLE), "-e", "staging", "--unit-dir", str(tmp_path / "units")],
                 cwd=tmp_path, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "units" / "kiln-agent-hello.service").read_text()
    assert lines(text, "ExecStart") == [f"{os.path.abspath(sys.executable)} -m kiln agent -f {EXAMPLE} -e staging"]
    assert calls[-1] == ("systemctl", "enable", "--now", "kiln-agent-hello.service")
    assert "installed" in r.stderr


def test_cli_print_changes_nothing_and_errors_are_clean(tmp_path):
    r = run_kiln(["agent", "install", "-f", str(EXAMPLE), "--print"], cwd=tmp_path, env=_env(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("# kiln-agent-hello.service")
    r = run_kiln(["agent", "install", "-f", str(EXAMPLE), "-e", "nope", "--print"], cwd=tmp_path, env=_env(tmp_path))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run_kiln(["agent", "install", "-f", str(tmp_path / "none.yaml")], cwd=tmp_path, env=_env(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.skipif(inst.SYSTEMD_RUNNING.exists(), reason="systemd runs here: the real command would install")
def test_the_real_command_on_a_host_without_systemd(tmp_path):
    """As a user runs it here (a separate process, nothing patched)."""
    r = subprocess.run([sys.executable, "-m", "kiln", "agent", "install", "-f", str(EXAMPLE)], cwd=tmp_path,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "[Service]" in r.stdout and "systemd is not running" in r.stderr
