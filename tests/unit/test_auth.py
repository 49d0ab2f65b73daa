"""The rules of server/auth.py without a server: the tokens file, loopback, the start-up plan, scopes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from client import cli
from core.config import load_settings
from derivatives.v1 import derivatives_pb2 as pb
from server.auth import SCOPES, Credentials, Scope, Security, is_loopback, parse_tokens

DIGEST = hashlib.sha256(b"secret").hexdigest()


def test_every_rpc_of_the_service_needs_a_listed_scope() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["DerivativeService"].methods}
    assert set(SCOPES) == methods
    assert SCOPES["DeleteAsset"] is Scope.ADMIN and SCOPES["FindOrCreateBundle"] is Scope.READ


def test_a_tokens_file_is_parsed_and_checked() -> None:
    creds = parse_tokens(
        f'[[token]]\nname = "a"\nscopes = ["read", "write"]\nsha256 = "{DIGEST}"\n'
        '[[token]]\nname = "b"\nscopes = ["admin"]\nsubject = "host.example.org"\n'
    )
    assert [c.principal.name for c in creds] == ["a", "b"]
    assert creds[0].principal.scopes == {Scope.READ, Scope.WRITE} and creds[0].sha256 == bytes.fromhex(DIGEST)
    assert creds[1].subject == "host.example.org"


@pytest.mark.parametrize(
    "text,words",
    [
        ("not toml [", "not valid TOML"),
        ('[[token]]\nname = "a"\nscopes = ["read"]\n', "exactly one of `sha256` or `subject`"),
        (f'[[token]]\nname = "a"\nscopes = ["root"]\nsha256 = "{DIGEST}"\n', "`scopes`"),
        (f'[[token]]\nname = "a"\nscopes = []\nsha256 = "{DIGEST}"\n', "`scopes`"),
        ('[[token]]\nname = "a"\nscopes = ["read"]\nsha256 = "abc"\n', "64 lowercase hex"),
        (f'[[token]]\nname = "a b"\nscopes = ["read"]\nsha256 = "{DIGEST}"\n', "`name`"),
        (f'[[token]]\nname = "a"\nscopes = ["read"]\nsha256 = "{DIGEST}"\n' * 2, "used twice"),
        (f'[[token]]\nname = "a"\nscopes = ["read"]\nsha256 = "{DIGEST}"\ntoken = "x"\n', "unknown keys"),
        ('[tokens]\nname = "a"\n', "unknown top-level keys"),
    ],
)
def test_a_bad_tokens_file_says_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(")):
        parse_tokens(text)


def test_bearer_tokens_are_matched_by_digest(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(f'[[token]]\nname = "a"\nscopes = ["read"]\nsha256 = "{DIGEST}"\n')
    creds = Credentials(str(path))
    principal = creds.bearer("secret")
    assert principal is not None and principal.name == "a"
    assert creds.bearer("Secret") is None and creds.bearer("") is None


@pytest.mark.parametrize(
    "listen,loopback",
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.1:1", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("unix:/tmp/d.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("example.org:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def plan(tmp_path: Path, **env: str) -> Security:
    return Security.plan(load_settings({"DERIVATIVES_DATA_DIR": str(tmp_path), **env}))


def test_the_start_up_plan(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\nname = "a"\nscopes = ["read"]\nsha256 = "{DIGEST}"\n')
    # Loopback, nothing configured: zero configuration, calls not authenticated.
    assert plan(tmp_path).interceptors() == []
    # Loopback with tokens: checked, plaintext allowed there.
    assert len(plan(tmp_path, DERIVATIVES_TOKENS_FILE=str(tokens)).interceptors()) == 1
    # Off loopback: refused without credentials, and bearer tokens refused without TLS ...
    with pytest.raises(SystemExit, match="without credentials"):
        plan(tmp_path, DERIVATIVES_LISTEN="0.0.0.0:50051")
    with pytest.raises(SystemExit, match="over plaintext"):
        plan(tmp_path, DERIVATIVES_LISTEN="0.0.0.0:50051", DERIVATIVES_TOKENS_FILE=str(tokens))
    # ... unless told so explicitly.
    assert plan(tmp_path, DERIVATIVES_LISTEN="0.0.0.0:50051", DERIVATIVES_AUTH="none").interceptors() == []
    opted = plan(
        tmp_path,
        DERIVATIVES_LISTEN="0.0.0.0:50051",
        DERIVATIVES_TOKENS_FILE=str(tokens),
        DERIVATIVES_ALLOW_PLAINTEXT_TOKENS="1",
    )
    assert len(opted.interceptors()) == 1
    with pytest.raises(SystemExit, match="both DERIVATIVES_TLS_CERT and DERIVATIVES_TLS_KEY"):
        plan(tmp_path, DERIVATIVES_TLS_CERT=str(tokens))
    with pytest.raises(SystemExit, match="DERIVATIVES_TOKENS_FILE"):
        plan(tmp_path, DERIVATIVES_TOKENS_FILE=str(tmp_path / "missing.toml"))


def test_import_sources_never_name_the_services_own_buckets() -> None:
    with pytest.raises(ValueError, match="own buckets"):
        load_settings({"DERIVATIVES_IMPORT_SOURCES": "incoming,originals/x"})
    with pytest.raises(ValueError, match="bucket or bucket/prefix"):
        load_settings({"DERIVATIVES_IMPORT_SOURCES": "Not_A_Bucket"})
    assert load_settings({"DERIVATIVES_IMPORT_SOURCES": " incoming , staging/in "}).import_sources


def test_the_cli_makes_a_token_and_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "catalog", "--scopes", "read,write"]) == 0
    out = capsys.readouterr()
    token = out.err.rsplit(": ", 1)[1].strip()
    (credential,) = parse_tokens(out.out)
    assert credential.principal.name == "catalog"
    assert credential.principal.scopes == {Scope.READ, Scope.WRITE}
    assert credential.sha256 == hashlib.sha256(token.encode()).digest()
    assert cli.main(["token", "x", "--scopes", "root"]) == 2
    assert cli.main(["token", 'a"b', "--scopes", "read"]) == 2
