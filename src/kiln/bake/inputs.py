"""Identity of baked images: a sha256 over every input, in a fixed order. Pure."""

from __future__ import annotations

import hashlib
import json

from kiln.bake.context import ContextFile
from kiln.spec.models import Base

# Bump when the way kiln turns inputs into an image changes, so old images are not reused.
RECIPE_VERSION = "1"


def base_inputs_hash(base: Base) -> str:
    doc = {
        "recipe": RECIPE_VERSION,
        "kind": "debootstrap-minbase",
        "suite": base.suite,
        "mirror": base.mirror,
        "packages": sorted(set(base.packages)),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def app_inputs_hash(files: list[ContextFile], dockerfile: str, args: dict[str, str], base_digest: str) -> str:
    doc = {
        "recipe": RECIPE_VERSION,
        "files": [[f.path, f.mode, f.digest] for f in files],
        "dockerfile": dockerfile,
        "args": dict(sorted(args.items())),
        "base": base_digest,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def render_dockerfile(steps: tuple[str, ...]) -> str:
    """A Dockerfile from the spec's `steps`: the baked base, then the steps in order."""
    return "ARG KILN_BASE\nFROM ${KILN_BASE}\n" + "".join(step.rstrip() + "\n" for step in steps)
