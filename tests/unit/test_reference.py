from pathlib import Path

from kiln.spec.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def test_docs_spec_md_is_generated_from_the_models() -> None:
    assert DOC.read_text() == render() + "\n", "run: python -m kiln.spec.reference > docs/spec.md"


def test_reference_lists_every_service_key() -> None:
    text = render()
    for key in ("replicas", "healthcheck", "writable", "cap_add", "drain_timeout", "stop_grace_period"):
        assert f"| `{key}` |" in text
