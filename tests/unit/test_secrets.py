"""kiln.bake.secrets: files that look like secrets are refused unless allowed."""

from __future__ import annotations

import pytest

from kiln.bake.secrets import is_allowed, secret_reason

RSA_KEY = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "head",
    [
        RSA_KEY,
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n",
        b"-----BEGIN PRIVATE KEY-----\n",
        b"-----BEGIN EC PRIVATE KEY-----\n",
        b"some config\nkey: |\n  -----BEGIN PRIVATE KEY-----\n",  # anywhere in the head
    ],
)
def test_private_key_content_is_a_secret_whatever_the_name(head):
    assert secret_reason("config/settings.yaml", head) == "holds a private key"


@pytest.mark.parametrize("head", [b"-----BEGIN PUBLIC KEY-----\n", b"-----BEGIN CERTIFICATE-----\n", b"print('hi')\n"])
def test_public_material_is_not_a_secret(head):
    assert secret_reason("data.txt", head) is None


@pytest.mark.parametrize(
    ("path", "head"),
    [
        (".env", b"API_KEY=abc123\n"),
        (".env", b"# settings\nexport API_KEY=abc123\n"),
        (".env", b"  DATABASE_URL = postgres://u:p@h/db\n"),
        ("app/.env", b"A=b"),
        (".env.production", b"A=b"),
        ("prod.env", b"A=b"),
    ],
)
def test_env_file_with_values_is_a_secret(path, head):
    assert secret_reason(path, head) == "is an .env file with values"


@pytest.mark.parametrize(
    ("path", "head"),
    [
        (".env", b""),
        (".env", b"# nothing here yet\n"),
        (".env", b"API_KEY=\n"),
        (".env.example", b"API_KEY=abc123\n"),
        (".env.sample", b"API_KEY=abc123\n"),
        ("config/.env.template", b"API_KEY=abc123\n"),
        ("environment.py", b"API_KEY = 'x'\n"),  # not an .env file
    ],
)
def test_env_files_without_values_and_examples_are_allowed(path, head):
    assert secret_reason(path, head) is None


def test_env_file_with_only_empty_values_is_allowed():
    assert secret_reason(".env", b"API_KEY=\nOTHER=\n") is None


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("id_rsa", "id_rsa"),
        ("home/.ssh/id_ed25519", "id_ed25519"),
        ("id_ecdsa", "id_ecdsa"),
        ("tls/server.pem", "*.pem"),
        ("server.key", "*.key"),
        ("cert.p12", "*.p12"),
        (".netrc", ".netrc"),
        (".pgpass", ".pgpass"),
    ],
)
def test_key_file_names(path, pattern):
    assert secret_reason(path, b"harmless") == f"is named like a key file ({pattern})"


@pytest.mark.parametrize("path", ["id_rsa.pub", "keys.py", "pem.txt", "monkey.txt", "src/id_rsa_loader.py"])
def test_names_that_only_resemble_key_files(path):
    assert secret_reason(path, b"harmless") is None


def test_is_allowed_globs():
    assert is_allowed("tls/server.pem", ("tls/*.pem",))
    assert is_allowed("tls/server.pem", ("docs/*", "tls/server.pem"))
    assert not is_allowed("server.pem", ("tls/*.pem",))
    assert not is_allowed("tls/server.key", ("tls/*.pem",))
    assert not is_allowed("tls/server.pem", ())
