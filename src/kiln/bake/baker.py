"""Bake the app image: hash every input, reuse an image with the same hash, else build.

The context sent to the builder is made from the same file list that was hashed, so the
inputs hash names exactly what went in."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kiln.bake.base import ensure_base
from kiln.bake.context import hash_context, list_context, read_dockerignore
from kiln.bake.inputs import app_inputs_hash, render_dockerfile
from kiln.bake.secrets import is_allowed, read_chunks, secret_reason
from kiln.errors import BuildError, SecretInContext
from kiln.git import git_state
from kiln.output import Output
from kiln.providers.base import Images
from kiln.providers.kind import Baked
from kiln.spec.loader import LoadedSpec

GENERATED_DOCKERFILE = ".kiln.Dockerfile"


@dataclass(frozen=True)
class BakedImage:
    id: str  # sha256:… image id, the digest a release records
    tag: str
    inputs_hash: str
    commit: str | None
    dirty: bool
    built: bool  # False when an image with the same inputs already existed


def image_repo(app: str) -> str:
    return f"kiln/{app}"


def bake(images: Images, loaded: LoadedSpec, out: Output, scratch: Path) -> BakedImage:
    spec = loaded.spec
    root = build_root(loaded.root, spec.build.context)
    paths = list_context(root, read_dockerignore(root))
    # kiln.yaml is config, which releases record; were it an input, any config change (an env
    # value, replicas) would make a new image, and environments could not share one.
    spec_file = loaded.path.resolve()
    if spec_file.is_relative_to(root):
        paths = [p for p in paths if p != spec_file.relative_to(root).as_posix()]
    _refuse_secrets(root, paths, spec.build.allow_secrets)
    dockerfile = _dockerfile_text(root, spec.build.dockerfile, spec.build.steps)
    base = ensure_base(images, spec.build.base, out, scratch)
    files = hash_context(root, paths)
    inputs = app_inputs_hash(files, dockerfile, spec.build.args, base.id)
    git = git_state(root)
    tag = f"{image_repo(spec.app)}:{inputs[:16]}"

    found = images.find_image(tag, {"kiln.inputs": inputs})
    if found:
        return BakedImage(found, tag, inputs, git.commit, git.dirty, built=False)

    labels = {
        "kiln.app": spec.app,
        "kiln.inputs": inputs,
        "kiln.base": base.id,
        "kiln.spec": loaded.digest,
        "kiln.commit": git.commit or "",
        "kiln.dirty": "true" if git.dirty else "false",
    }
    context = _context_tar(root, paths, dockerfile)
    with out.working(f"Baking {tag} from {len(paths)} files") as update:
        image = images.build(context, GENERATED_DOCKERFILE, tag, {**spec.build.args, "KILN_BASE": base.id},
                             labels, update)
    out.done(f"Baked {tag} ({image[:19]})")
    return BakedImage(image, tag, inputs, git.commit, git.dirty, built=True)


def build_root(spec_dir: Path, context: str) -> Path:
    """build.context resolved (symlinks followed), required to be a directory inside the spec's
    directory: a pushed kiln.yaml cannot bake the host's files. (Absolute paths and '..' are
    already spec errors; this also catches a symlinked directory pointing out.)"""
    root = _confined(spec_dir.resolve(), context, "build.context", "kiln.yaml's directory",
                     "refusing to bake files from there", "a real directory inside the repository")
    if not root.is_dir():
        raise BuildError(f"build.context {context!r}: {root} does not exist.", "Fix build.context in kiln.yaml.")
    return root


def _confined(top: Path, rel: str, key: str, where: str, refusal: str, instead: str) -> Path:
    """`rel` under `top`, symlinks followed; a BuildError naming `key` when it resolves outside."""
    path = (top / rel).resolve()
    if not path.is_relative_to(top):
        raise BuildError(f"{key} {rel!r} resolves to {path}, outside {where} {top} (through a symlink); {refusal}.",
                         f"Point {key} at {instead}.")
    return path


def _refuse_secrets(root: Path, paths: list[str], allow: tuple[str, ...]) -> None:
    found = []
    for rel in paths:
        if is_allowed(rel, allow):
            continue
        reason = secret_reason(rel, read_chunks(str(root / rel)))  # the whole file
        if reason:
            found.append(f"{rel} {reason}")
    if found:
        listing = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise SecretInContext(
            f"refusing to bake files that look like secrets: {listing}.",
            "Keep secrets out of the image (add them to .dockerignore and pass them at run time), "
            "or, if they are not secret, list them under build.allow_secrets in kiln.yaml.",
        )


def _dockerfile_text(root: Path, dockerfile: str | None, steps: tuple[str, ...]) -> str:
    if not dockerfile:
        return render_dockerfile(steps)
    path = _confined(root, dockerfile, "build.dockerfile", "the build context", "refusing to read it",
                     "a real file inside build.context")
    if not path.is_file():
        raise BuildError(f"build.dockerfile: {path} does not exist.", "Fix the path (it is relative to build.context).")
    return path.read_text()


def _context_tar(root: Path, paths: list[str], dockerfile: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in paths:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(root / rel, "rb") as fh:
                tar.addfile(info, fh)
        data = dockerfile.encode()
        info = tarfile.TarInfo(GENERATED_DOCKERFILE)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def bake_container(images: Images, loaded: LoadedSpec, out: Output, scratch: Path, _home: Path) -> Baked:
    """The app image as an engine of containers records it (the `docker` and `swarm` engines'
    builder, providers/docker_kind.py)."""
    image = bake(images, loaded, out, scratch)
    return Baked(image.id, image.tag, image.inputs_hash, image.commit, image.dirty)
