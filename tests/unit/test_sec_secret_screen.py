"""Issue 15, item 15: the secret-file screen. Names are matched whatever their case, PGP/PuTTY
keys, AWS credentials, registry tokens and the usual credential files are found, and so is a key
at the end of a large file; the bake is refused before the engine is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bake.baker import bake
from kiln.bake.secrets import CHUNK, read_chunks, secret_reason
from kiln.errors import SecretInContext
from kiln.output import Output
from kiln.spec.loader import load_spec

PGP = b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGVk\n-----END PGP PRIVATE KEY BLOCK-----\n"
PUTTY = b"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n"
AWS = b"[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG\n"


@pytest.mark.parametrize(("path", "content", "reason"), [
    ("ID_RSA", b"x", "is named like a key file (id_rsa)"),
    ("keys/Id_Ed25519", b"x", "is named like a key file (id_ed25519)"),
    ("tls/server.KEY", b"x", "is named like a key file (*.key)"),
    ("tls/Cert.PEM", b"x", "is named like a key file (*.pem)"),
    ("deploy.ppk", b"x", "is named like a key file (*.ppk)"),
    (".NETRC", b"machine x login y password z", "is named like a key file (.netrc)"),
    (".pypirc", b"[pypi]\npassword = x\n", "is named like a key file (.pypirc)"),
    (".git-credentials", b"https://u:p@github.com\n", "is named like a key file (.git-credentials)"),
    ("home/.aws/credentials", b"[default]\n", "is named like a credentials file (*.aws/credentials)"),
    ("config/settings.txt", AWS, "holds an AWS secret access key"),
    ("notes.asc", PGP, "holds a private key"),
    ("key.txt", PUTTY, "holds a private key"),
    (".npmrc", b"registry=https://r.example\n//r.example/:_authToken=npm_abc\n", "is an .npmrc with a registry token"),
    (".envrc", b"export DATABASE_URL=postgres://u:p@h/db\n", "is an .envrc file with values"),
    (".ENV", b"A=b\n", "is an .env file with values"),
])
def test_secrets_the_screen_used_to_miss(path, content, reason):
    assert secret_reason(path, content) == reason


@pytest.mark.parametrize(("path", "content"), [
    (".npmrc", b"registry=https://r.example\nengine-strict=true\n"),
    (".envrc", b"# direnv: nothing set\nuse nix\n"),
    ("README.md", b"Put aws_secret_access_key in ~/.aws/credentials, never here.\n"),
    ("public.asc", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n"),
    ("Keys.py", b"x"),
])
def test_lookalikes_that_hold_no_secret_pass(path, content):
    assert secret_reason(path, content) is None


def test_a_key_past_the_first_chunks_is_found_even_split_across_two(tmp_path):
    big = tmp_path / "data.bin"
    marker = b"-----BEGIN OPENSSH PRIVATE KEY-----"
    split = CHUNK * 3 - len(marker) // 2  # the marker straddles the 3rd and 4th chunks
    big.write_bytes(b"a" * split + marker + b"\nb3Blbn\n")
    assert secret_reason("data.bin", read_chunks(str(big))) == "holds a private key"
    big.write_bytes(b"a" * (CHUNK * 3) + b"\n")
    assert secret_reason("data.bin", read_chunks(str(big))) is None


class NoImages:
    def __getattr__(self, name):
        raise AssertionError(f"the bake reached the engine ({name}) although it should have been refused")


def test_the_bake_refuses_them_before_using_the_engine(tmp_path: Path):
    app = tmp_path / "app"
    (app / "home" / ".aws").mkdir(parents=True)
    (app / "kiln.yaml").write_text("app: shop\nbuild: {steps: [COPY . /app]}\nservices: {web: {port: 8000}}\n"
                                   "environments: {production: {port: 8080}}\n")
    (app / "ID_RSA").write_text("x")
    (app / "home" / ".aws" / "credentials").write_text("[default]\n")
    (app / "dump.sql").write_bytes(b"-- " + b"x" * 100_000 + b"\n" + PGP)  # past the old 64 KiB head
    with pytest.raises(SecretInContext) as caught:
        bake(NoImages(), load_spec(app / "kiln.yaml"), Output(quiet=True), tmp_path / "scratch")
    assert caught.value.message == (
        "refusing to bake files that look like secrets: ID_RSA is named like a key file (id_rsa); dump.sql holds a "
        "private key; home/.aws/credentials is named like a credentials file (*.aws/credentials).")
