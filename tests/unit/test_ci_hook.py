"""`kiln ci hook install`: the post-receive script it writes."""

from __future__ import annotations

import os
import stat

import pytest

from kiln.ci.hook import install, script
from kiln.errors import UsageError


def test_the_script_keeps_the_state_location_but_never_the_secret_key(tmp_path):
    text = script(tmp_path / "app.git", "deploy/kiln.yaml", "/opt/kiln/bin/python",
                  {"KILN_HOME": "/var/lib/kiln", "KILN_SECRET_KEY": "k" * 44, "KILN_EXTRA_LABELS": "a=b"})
    assert text.startswith("#!/bin/sh\n")
    assert ': "${KILN_HOME:=/var/lib/kiln}"; export KILN_HOME' in text
    assert "KILN_EXTRA_LABELS:=a=b" in text
    assert "KILN_SECRET_KEY" not in text and "k" * 44 not in text
    assert text.rstrip().endswith(f"-m kiln ci hook receive --repo {tmp_path / 'app.git'} --spec deploy/kiln.yaml")


def test_install_writes_an_executable_hook_and_keeps_a_foreign_one(tmp_path):
    repo = tmp_path / "app.git"
    (repo / "hooks").mkdir(parents=True)
    target = install(repo, "kiln.yaml", {})
    assert target == repo / "hooks" / "post-receive"
    assert stat.S_IMODE(target.stat().st_mode) & 0o111
    install(repo, "kiln.yaml", {})  # its own hook is rewritten
    target.write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(UsageError, match="not kiln's"):
        install(repo, "kiln.yaml", {})
    install(repo, "kiln.yaml", {}, force=True)
    assert "kiln ci hook receive" in target.read_text()
    assert os.access(target, os.X_OK)
