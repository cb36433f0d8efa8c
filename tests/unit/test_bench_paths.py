"""bench/ finds the venv's interpreter next to its `kiln` entry point, in a checkout named kiln too."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "harness.py"


def _interpreter_of():
    spec = importlib.util.spec_from_file_location("bench_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.interpreter_of


def test_the_interpreter_of_a_venv_under_a_directory_named_kiln(tmp_path):
    bin_dir = tmp_path / "kiln" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "kiln").touch()
    (bin_dir / "python").touch()
    found = _interpreter_of()(str(bin_dir / "kiln"))
    assert found == str(bin_dir / "python")
    assert Path(found).exists()
