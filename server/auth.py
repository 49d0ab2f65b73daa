"""Who may call what: bearer tokens and client certificates, scopes per RPC, and the start-up rules.

- **Credentials** come from the TOML file named by DERIVATIVES_TOKENS_FILE: `[[token]]` tables
  of `name`, `scopes` and either `sha256` (hex SHA-256 of a bearer token; the token itself is
  never stored) or `subject` (a client certificate's CN or a SAN, for mutual TLS). With a client
  CA and no tokens file, every certificate that CA signed is a principal (its CN) with every scope.
  The file is re-read when it changes (at most once per RELOAD_SECONDS), so tokens rotate
  without a restart; a file that no longer parses keeps the previous credentials and logs why.
- **Scopes** are not hierarchical: `SCOPES` names the one each RPC needs. Health and reflection
  are open (reflection can be turned off: DERIVATIVES_REFLECTION=false).
- **The check** runs around the handler, where the peer's certificate is visible: missing or
  unknown credentials are UNAUTHENTICATED, a scope the caller lacks is PERMISSION_DENIED naming
  it. Bearer tokens are compared as SHA-256 digests, in constant time, against every credential.
- **Safe defaults** (`Security.plan`): on loopback with no credentials configured, calls are not
  authenticated (`make run` needs no set-up); off loopback the server refuses to start without
  credentials, and refuses bearer tokens without TLS, unless told otherwise explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status

from core import logs
from core.config import Settings, split_listen
from core.errors import PermissionDenied, Reason, Unauthenticated
from server.handlers import Kind, wrap
from server.rpc_trace import call_ended
from server.status import to_status

log = logging.getLogger("derivatives.auth")

SERVICE = "/derivatives.v1.DerivativeService/"
RELOAD_SECONDS = 2.0
ANONYMOUS = "anonymous"  # the principal of every call when authentication is off


def current_principal() -> str:
    """The caller of the call being served: its credential's name, or "anonymous" without authentication."""
    return logs.principal.get() or ANONYMOUS


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# The scope each RPC needs (a test checks that every RPC of the service is listed).
SCOPES: dict[str, Scope] = {
    "GetAsset": Scope.READ,
    "ListAssets": Scope.READ,
    "GetWork": Scope.READ,
    "GetJob": Scope.READ,
    "ListDerivativeDefinitions": Scope.READ,
    "WatchProgress": Scope.READ,
    "ReadBundle": Scope.READ,
    "FindOrCreateBundle": Scope.READ,
    "PutAsset": Scope.WRITE,
    "UploadOriginal": Scope.WRITE,
    "PutWork": Scope.WRITE,
    "CreateDerivatives": Scope.WRITE,
    "UpdateDerivative": Scope.WRITE,
    "RemoveDerivative": Scope.WRITE,
    "DeleteAsset": Scope.ADMIN,
    "ReclaimStorage": Scope.ADMIN,
}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class Credential:
    """One `[[token]]` table: a bearer token's digest or a certificate subject, and its scopes."""

    principal: Principal
    sha256: bytes = b""
    subject: str = ""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str = "tokens file") -> list[Credential]:
    """The credentials of a tokens file; ValueError naming the table and field that is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(data) - {"token"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)} (expected [[token]] tables)")
    tables = data.get("token", [])
    if not isinstance(tables, list):
        raise ValueError(f"{source}: `token` must be an array of tables ([[token]])")
    out: list[Credential] = []
    names: set[str] = set()
    for i, table in enumerate(tables):
        where = f"{source}: token {i + 1}"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: must be a table")
        extra = set(table) - {"name", "scopes", "sha256", "subject"}
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{where}: `name` must match {_NAME.pattern}")
        if name in names:
            raise ValueError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        scopes = table.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(s in set(Scope) for s in scopes):
            raise ValueError(f"{where} ({name}): `scopes` must be a non-empty list of {[s.value for s in Scope]}")
        sha, subject = table.get("sha256", ""), table.get("subject", "")
        if bool(sha) == bool(subject):
            raise ValueError(f"{where} ({name}): set exactly one of `sha256` or `subject`")
        if sha and (not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha)):
            raise ValueError(f"{where} ({name}): `sha256` must be 64 lowercase hex digits")
        if subject and not isinstance(subject, str):
            raise ValueError(f"{where} ({name}): `subject` must be a string")
        principal = Principal(name, frozenset(Scope(s) for s in scopes))
        out.append(Credential(principal, bytes.fromhex(sha) if sha else b"", subject))
    return out


class Credentials:
    """The tokens file, re-read when it changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[int, ...] | None = None
        self._checked = 0.0
        self.tokens: list[Credential] = []
        self.subjects: dict[str, Principal] = {}
        if self.path is not None:
            self._load(self._read_stamp())  # a bad file stops start-up (ValueError, OSError)

    def _read_stamp(self) -> tuple[int, ...]:
        """What changes when the file does: a rewrite within one mtime tick still changes the inode or ctime."""
        assert self.path is not None
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)

    def _load(self, stamp: tuple[int, ...]) -> None:
        assert self.path is not None
        credentials = parse_tokens(self.path.read_text(), str(self.path))
        self.tokens = [c for c in credentials if c.sha256]
        self.subjects = {c.subject: c.principal for c in credentials if c.subject}
        self._stamp = stamp

    def refresh(self) -> None:
        """Re-read the file if it changed since the last look (at most once per RELOAD_SECONDS)."""
        now = time.monotonic()
        if self.path is None or now - self._checked < RELOAD_SECONDS:
            return
        self._checked = now
        try:
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._load(stamp)
                log.info("tokens file %s reloaded: %d credentials", self.path, len(self.tokens) + len(self.subjects))
        except (OSError, ValueError) as exc:
            log.error("tokens file %s not reloaded, keeping the previous credentials: %s", self.path, exc)

    def from_header(self, header: str) -> Principal:
        """The principal of an `authorization: Bearer <token>` value (gRPC metadata or an HTTP header)."""
        scheme, _, token = header.partition(" ")
        principal = self.bearer(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthenticated("unknown bearer token", Reason.CREDENTIALS_INVALID)
        return principal

    def require(self, principal: Principal, scope: Scope) -> None:
        if scope not in principal.scopes:
            raise PermissionDenied(
                f"{principal.name} lacks the {scope.value!r} scope this call needs", Reason.SCOPE_REQUIRED, scope=scope
            )

    def bearer(self, token: str) -> Principal | None:
        digest = token_digest(token)
        found = None
        for credential in self.tokens:  # every one, no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, credential.sha256):
                found = credential.principal
        return found


def is_loopback(listen: str) -> bool:
    """Whether a listen address is reachable only from this host (unix sockets count)."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = split_listen(listen)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like wildcards parse; names other than localhost are not trusted


@dataclass
class Security:
    """What the gRPC role does about trust: server credentials (TLS) and whether calls are checked."""

    server_credentials: grpc.ServerCredentials | None
    credentials: Credentials | None  # None: calls are not authenticated
    any_client_certificate: bool  # a client CA and no tokens file: every certificate it signed is let in

    @classmethod
    def plan(cls, settings: Settings) -> Security:
        """From the settings, or SystemExit with a message saying how to configure it."""
        loopback = is_loopback(settings.listen)
        tls = _server_credentials(settings)
        _check_http(settings, tls is not None)
        if settings.auth == "none":
            if not loopback:
                log.warning("DERIVATIVES_AUTH=none: anyone who reaches %s may call every RPC", settings.listen)
            return cls(tls, None, False)
        try:
            credentials = Credentials(settings.tokens_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"configuration error: DERIVATIVES_TOKENS_FILE: {exc}") from None
        if not settings.tokens_file and not settings.tls_client_ca:
            if loopback:
                return cls(tls, None, False)
            raise SystemExit(
                f"refusing to serve on {settings.listen} without credentials: it is not a loopback address. "
                "Set DERIVATIVES_TOKENS_FILE (bearer tokens) or DERIVATIVES_TLS_CLIENT_CA (client certificates), "
                "see docs/security.md; or set DERIVATIVES_AUTH=none to serve without authentication."
            )
        # Any tokens file counts, even one with no bearer token yet: tokens added by a reload would travel in clear.
        if settings.tokens_file and tls is None and not loopback and not settings.allow_plaintext_tokens:
            raise SystemExit(
                f"refusing bearer tokens over plaintext on {settings.listen}: anyone on the path can read them. "
                "Set DERIVATIVES_TLS_CERT and DERIVATIVES_TLS_KEY, see docs/security.md; "
                "or set DERIVATIVES_ALLOW_PLAINTEXT_TOKENS=1 (e.g. behind a TLS-terminating proxy)."
            )
        return cls(tls, credentials, bool(settings.tls_client_ca) and not settings.tokens_file)

    def describe(self) -> str:
        if self.credentials is None:
            return "calls not authenticated"
        kinds = [f"{len(self.credentials.tokens)} bearer tokens"] if self.credentials.tokens else []
        if self.credentials.subjects or self.any_client_certificate:
            kinds.append("client certificates")
        return "authenticated: " + (" and ".join(kinds) or "no credentials yet")

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [] if self.credentials is None else [AuthInterceptor(self.credentials, self.any_client_certificate)]


def _check_http(settings: Settings, tls: bool) -> None:
    """The HTTP listener follows the gRPC rules off loopback: credentials configured, TLS for tokens."""
    if not settings.http_listen or is_loopback(settings.http_listen) or settings.auth == "none":
        return
    if not settings.link_keys and not settings.tokens_file:
        raise SystemExit(
            f"refusing to serve HTTP on {settings.http_listen} without credentials: it is not a loopback address. "
            "Set DERIVATIVES_LINK_KEYS (signed browser links) or DERIVATIVES_TOKENS_FILE, see docs/browser.md; "
            "or DERIVATIVES_HTTP_LISTEN= (empty) to serve no HTTP."
        )
    if settings.tokens_file and not tls and not settings.allow_plaintext_tokens:
        raise SystemExit(
            f"refusing bearer tokens over plaintext HTTP on {settings.http_listen}: set DERIVATIVES_TLS_CERT and "
            "DERIVATIVES_TLS_KEY, or DERIVATIVES_ALLOW_PLAINTEXT_TOKENS=1 (behind a TLS-terminating proxy)."
        )


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise SystemExit("configuration error: DERIVATIVES_TLS_CLIENT_CA needs DERIVATIVES_TLS_CERT and _KEY")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise SystemExit("configuration error: set both DERIVATIVES_TLS_CERT and DERIVATIVES_TLS_KEY")
    try:
        cert, key = Path(settings.tls_cert).read_bytes(), Path(settings.tls_key).read_bytes()
        ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise SystemExit(f"configuration error: cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _subjects(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    auth = context.auth_context()
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each DerivativeService handler with the check; health and reflection pass untouched."""

    def __init__(self, credentials: Credentials, any_client_certificate: bool) -> None:
        self.credentials = credentials
        self.any_client_certificate = any_client_certificate

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        self.credentials.refresh()
        header = _bearer(context.invocation_metadata())
        if header is not None:
            return self.credentials.from_header(header)
        subjects = _subjects(context)
        if subjects:
            for subject in subjects:
                if subject in self.credentials.subjects:
                    return self.credentials.subjects[subject]
            if self.any_client_certificate:
                return Principal(subjects[0], frozenset(Scope))
            raise Unauthenticated(
                "the client certificate's subject is not in the tokens file", Reason.CREDENTIALS_INVALID
            )
        raise Unauthenticated(
            "credentials required: send `authorization: Bearer <token>` or a client certificate",
            Reason.CREDENTIALS_MISSING,
        )

    def check(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The caller's name, or a domain error (UNAUTHENTICATED, PERMISSION_DENIED)."""
        principal = self.authenticate(context)
        self.credentials.require(principal, SCOPES.get(method.removeprefix(SERVICE), Scope.ADMIN))
        return principal.name

    async def _admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            name = self.check(method, context)
        except (Unauthenticated, PermissionDenied) as exc:
            peer = context.peer()
            log.info("%s refused for %s: %s", method, peer[:100], exc)
            status = to_status(exc)
            call_ended(status.code, status.message)  # the refusal's code on the call's span
            await context.abort_with_status(rpc_status.to_status(status))
        logs.principal.set(name)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(SERVICE):
            return handler

        @contextlib.asynccontextmanager
        async def admitted(kind: Kind, context: Any) -> AsyncIterator[None]:
            await self._admit(method, context)  # in the call's own context: its log lines name the caller
            yield

        return wrap(handler, admitted)
