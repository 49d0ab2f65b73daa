"""Settings from environment variables, optionally seeded from a TOML file.

Precedence: environment variable > TOML file (`DERIVATIVES_CONFIG`) > default.
Each setting's environment variable is listed in README.md. Each field's metadata holds its
environment variable and its rules (bounds, pattern, choices); `load_settings` enforces them, so an
out-of-range value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.ids import BUCKET_NAME, DERIVATIVE_KEY

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")
# Metadata keys of a Settings field that state a rule (besides "env").
RULE_KEYS = frozenset({"gt", "ge", "le", "pattern", "choices", "ignore_case", "check"})


def split_listen(value: str) -> tuple[str, int]:
    """A TCP listen address as (host, port): `host:port`, `[v6]:port` (brackets dropped) or `:port` (host "":
    every interface, which each listener binds its own way). Port 0-65535 (0 picks a free port); ValueError else."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"must be host:port (port 0-65535), got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _host_port(value: str) -> str | None:
    """A gRPC listen address: [host]:port with port 0-65535 (0 picks a free port), or unix:PATH."""
    if value.startswith(("unix:", "unix-abstract:")) and value.split(":", 1)[1]:
        return None
    try:
        split_listen(value)
    except ValueError:
        return f"must be host:port (port 0-65535) or unix:PATH, got {value!r}"
    return None


def _listen_or_off(value: str) -> str | None:
    return None if value == "" else _host_port(value)


def _tcp_listen_or_off(value: str) -> str | None:
    """host:port (a TCP listener: HTTP), or empty for none."""
    if value.startswith(("unix:", "unix-abstract:")):
        return f"must be host:port, got {value!r}"
    return _listen_or_off(value)


def _link_keys(value: str) -> str | None:
    for entry in split_list(value):
        kid, sep, secret = entry.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", kid) or len(secret) < 16:
            return "each entry must be KEY_ID=SECRET (id: letters, digits, . _ -; secret: at least 16 characters)"
    return None


def _import_sources(value: str) -> str | None:
    for source in split_list(value):
        bucket, _, prefix = source.partition("/")
        if not BUCKET_NAME.fullmatch(bucket):
            return f"each entry must be bucket or bucket/prefix with a valid bucket name, got {source!r}"
        if ".." in prefix.split("/") or "//" in prefix:
            return f"a prefix must not contain '..' or '//', got {source!r}"
    return None


def split_list(value: str) -> list[str]:
    """A comma-separated setting's entries, stripped, empty ones dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class Settings:
    # Each field's metadata: "env" is its environment variable; the other keys are the rules
    # `check_settings` enforces (see `RULE_KEYS`): "gt"/"ge"/"le" bounds, "pattern" (fullmatch),
    # "choices" (with "ignore_case"), "check" (a function returning a complaint or None).
    # gRPC listen address.
    listen: str = field(default="127.0.0.1:50051", metadata={"env": "DERIVATIVES_LISTEN", "check": _host_port})
    # Postgres URL; empty starts an embedded server under data_dir/pg.
    database_url: str = field(default="", metadata={"env": "DATABASE_URL"})
    # Where embedded Postgres and filesystem storage keep their files.
    data_dir: str = field(default=".data", metadata={"env": "DERIVATIVES_DATA_DIR"})
    # Object storage backend: "file" or "s3".
    storage: str = field(default="file", metadata={"env": "DERIVATIVES_STORAGE", "choices": ("file", "s3")})
    s3_endpoint: str = field(default="127.0.0.1:9000", metadata={"env": "S3_ENDPOINT"})
    s3_access_key: str = field(default="", metadata={"env": "S3_ACCESS_KEY"})
    s3_secret_key: str = field(default="", metadata={"env": "S3_SECRET_KEY"})
    s3_region: str = field(default="us-east-1", metadata={"env": "S3_REGION"})
    s3_secure: bool = field(default=False, metadata={"env": "S3_SECURE"})
    bucket_originals: str = field(
        default="originals", metadata={"env": "DERIVATIVES_BUCKET_ORIGINALS", "pattern": BUCKET_NAME}
    )
    bucket_derivatives: str = field(
        default="derivatives", metadata={"env": "DERIVATIVES_BUCKET_DERIVATIVES", "pattern": BUCKET_NAME}
    )
    bucket_bundles: str = field(
        default="bundles", metadata={"env": "DERIVATIVES_BUCKET_BUNDLES", "pattern": BUCKET_NAME}
    )
    # Largest gRPC message accepted (PutAsset's inline `data`); grpc's own limit is 2**31-1.
    max_message_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"env": "DERIVATIVES_MAX_MESSAGE_BYTES", "ge": 1, "le": 2**31 - 1}
    )
    # Worker processes in this process's pool (default: one per core); 0 runs no jobs here.
    workers: int = field(default=os.cpu_count() or 1, metadata={"env": "DERIVATIVES_WORKERS", "ge": 0})
    # gRPC (and HTTP) serving processes sharing the port (SO_REUSEPORT) under one parent that owns the
    # once-per-host roles (embedded Postgres, the runner and its pool, maintenance, metrics). 1: one process.
    server_processes: int = field(default=1, metadata={"env": "DERIVATIVES_SERVER_PROCESSES", "ge": 1, "le": 64})
    # Largest original (width x height) a transformer will decode.
    max_pixels: int = field(default=200_000_000, metadata={"env": "DERIVATIVES_MAX_PIXELS", "ge": 1})
    # Largest decoded original: width x height x bands x bytes per band, from the header, before decoding.
    # 1 GiB: the largest whole-in-memory decode (interlaced 16-bit RGBA PNG) that still got every default
    # derivative under the default 2 GiB worker ceiling (docs/limits-measured.md). Raise it with that ceiling.
    max_decoded_bytes: int = field(default=1024**3, metadata={"env": "DERIVATIVES_MAX_DECODED_BYTES", "ge": 1})
    # Address-space ceiling (RLIMIT_AS) of each pool process; 0 sets none. An allocation over it fails that
    # asset ("needs more memory than the worker's limit"), not the process. Above an eighth of it, an original
    # wanting a full-size derivative is streamed (two decodes) instead of held in memory.
    worker_memory_bytes: int = field(default=2 * 1024**3, metadata={"env": "DERIVATIVES_WORKER_MEMORY", "ge": 0})
    # Largest original (PutAsset, UploadOriginal, a storage_ref copy) and UpdateDerivative body, in bytes.
    max_original_bytes: int = field(default=2 * 1024**3, metadata={"env": "DERIVATIVES_MAX_ORIGINAL_BYTES", "ge": 1})
    max_derivative_bytes: int = field(
        default=512 * 1024**2, metadata={"env": "DERIVATIVES_MAX_DERIVATIVE_BYTES", "ge": 1}
    )
    # Members of one work, assets of one CreateDerivatives, derivative keys in `only` + `exclude`.
    max_work_members: int = field(default=100_000, metadata={"env": "DERIVATIVES_MAX_WORK_MEMBERS", "ge": 1})
    max_job_assets: int = field(default=10_000, metadata={"env": "DERIVATIVES_MAX_JOB_ASSETS", "ge": 1})
    max_request_keys: int = field(default=64, metadata={"env": "DERIVATIVES_MAX_REQUEST_KEYS", "ge": 1})
    # Queued and running jobs one principal may have at once; past that, RESOURCE_EXHAUSTED. 0 = no limit.
    max_jobs_per_principal: int = field(default=1000, metadata={"env": "DERIVATIVES_MAX_JOBS_PER_PRINCIPAL", "ge": 0})
    # --- trust (docs/security.md) ---
    # "auto": credentials required when a tokens file or client CA is set, refused start-up off loopback
    # without either; "none": no authentication, anywhere (an explicit opt-out).
    auth: str = field(default="auto", metadata={"env": "DERIVATIVES_AUTH", "choices": ("auto", "none")})
    # TOML file of [[token]] tables: name, scopes, and sha256 (of a bearer token) or subject (of a client certificate).
    tokens_file: str = field(default="", metadata={"env": "DERIVATIVES_TOKENS_FILE"})
    # Accept bearer tokens over plaintext off loopback (they can be sniffed): an explicit opt-in.
    allow_plaintext_tokens: bool = field(default=False, metadata={"env": "DERIVATIVES_ALLOW_PLAINTEXT_TOKENS"})
    # PEM files: serve TLS with cert + key; with a client CA, require client certificates it signed (mTLS).
    tls_cert: str = field(default="", metadata={"env": "DERIVATIVES_TLS_CERT"})
    tls_key: str = field(default="", metadata={"env": "DERIVATIVES_TLS_KEY"})
    tls_client_ca: str = field(default="", metadata={"env": "DERIVATIVES_TLS_CLIENT_CA"})
    # The HTTP face for browsers (docs/browser.md): host:port, or empty for none.
    http_listen: str = field(
        default="127.0.0.1:8080", metadata={"env": "DERIVATIVES_HTTP_LISTEN", "check": _listen_or_off}
    )
    # Prometheus metrics of every process of this host at http://HOST:PORT/metrics (docs/metrics.md); empty: off.
    metrics_listen: str = field(default="", metadata={"env": "DERIVATIVES_METRICS_LISTEN", "check": _tcp_listen_or_off})
    # Keys that sign browser download links: KEY_ID=SECRET, comma-separated (several: rotation).
    link_keys: str = field(default="", metadata={"env": "DERIVATIVES_LINK_KEYS", "check": _link_keys})
    # Origins (https://site.example) whose pages may call the HTTP face (CORS), comma-separated; "*" for any.
    http_cors_origins: str = field(default="", metadata={"env": "DERIVATIVES_HTTP_CORS_ORIGINS"})
    # Server reflection (grpcurl without proto files); open to anyone who reaches the port.
    reflection: bool = field(default=True, metadata={"env": "DERIVATIVES_REFLECTION"})
    # Where PutAsset's storage_ref may copy from: "bucket" or "bucket/prefix", comma-separated; empty = nowhere.
    import_sources: str = field(default="", metadata={"env": "DERIVATIVES_IMPORT_SOURCES", "check": _import_sources})
    # TOML file of derivative definitions; empty uses the built-in set.
    definitions_file: str = field(default="", metadata={"env": "DERIVATIVES_DEFINITIONS"})
    # Presigned URL lifetime in seconds (S3 presigns for at most 7 days).
    url_expiry_seconds: int = field(
        default=2 * 24 * 3600, metadata={"env": "DERIVATIVES_URL_EXPIRY", "ge": 1, "le": 7 * 24 * 3600}
    )
    # Seconds in-flight calls get to finish on SIGTERM/SIGINT.
    shutdown_grace_seconds: float = field(default=10.0, metadata={"env": "DERIVATIVES_SHUTDOWN_GRACE", "ge": 0})
    # Seconds between health probes of Postgres and storage.
    health_interval_seconds: float = field(default=2.0, metadata={"env": "DERIVATIVES_HEALTH_INTERVAL", "gt": 0})
    # A job whose runner has not heartbeated for this long is taken over by another.
    job_lease_seconds: float = field(default=30.0, metadata={"env": "DERIVATIVES_JOB_LEASE_SECONDS", "gt": 0})
    # Seconds between WatchProgress heartbeats while a target is quiet.
    progress_heartbeat_seconds: float = field(default=5.0, metadata={"env": "DERIVATIVES_PROGRESS_HEARTBEAT", "gt": 0})
    # Bundles: derivative a PDF page is made from, the page dpi, and what a ZIP holds for non-JPEG originals.
    pdf_derivative_key: str = field(
        default="download_medium", metadata={"env": "DERIVATIVES_PDF_DERIVATIVE", "pattern": DERIVATIVE_KEY}
    )
    # Two distinct resolutions: pdf_dpi is the page size of bundle PDFs (pixels at this dpi);
    # pdf_render_dpi is how PDF *originals* are rasterized (full-size and the scale of PDF-page derivatives).
    pdf_dpi: float = field(default=150.0, metadata={"env": "DERIVATIVES_PDF_DPI", "gt": 0, "le": 2400})
    pdf_render_dpi: float = field(default=150.0, metadata={"env": "DERIVATIVES_PDF_RENDER_DPI", "gt": 0, "le": 1200})
    zip_derivative_key: str = field(
        default="download_full", metadata={"env": "DERIVATIVES_ZIP_DERIVATIVE", "pattern": DERIVATIVE_KEY}
    )
    # Institution named in bundles' about.txt, ZIP comment and PDF metadata.
    institution: str = field(default="", metadata={"env": "DERIVATIVES_INSTITUTION"})
    # Bundles not requested or read for this long are deleted by the reaper.
    bundle_idle_seconds: float = field(
        default=20 * 24 * 3600.0, metadata={"env": "DERIVATIVES_BUNDLE_IDLE_SECONDS", "gt": 0}
    )
    # Total size of finished bundles to keep (least recently used go first); 0 = no budget.
    bundle_cache_bytes: int = field(default=0, metadata={"env": "DERIVATIVES_BUNDLE_CACHE_BYTES", "ge": 0})
    bundle_reap_interval_seconds: float = field(
        default=600.0, metadata={"env": "DERIVATIVES_BUNDLE_REAP_INTERVAL", "gt": 0}
    )
    # A failed bundle is rebuilt on request once its error is this old.
    bundle_error_retry_seconds: float = field(default=60.0, metadata={"env": "DERIVATIVES_BUNDLE_ERROR_RETRY", "ge": 0})
    # A bundle's access is written at most once per this many seconds (a cache hit touched more recently
    # writes nothing), and the reaper spares bundles accessed within twice this. Also how long a process
    # trusts that a built bundle's object is still stored before it asks storage again.
    bundle_access_flush_seconds: float = field(
        default=5.0, metadata={"env": "DERIVATIVES_BUNDLE_ACCESS_FLUSH", "ge": 0, "le": 3600}
    )
    # Storage sweep (core/reclaim.py): objects no row references are deleted once older than the grace
    # period; the maintenance role sweeps every gc_interval seconds (0: only on demand, ReclaimStorage).
    # At least 10 minutes: the grace is what keeps an upload whose commit is on its way (the re-check before a
    # delete cannot see an uncommitted row). Drills go lower through a test-only failpoint (core/failpoints.py).
    gc_grace_seconds: float = field(default=3600.0, metadata={"env": "DERIVATIVES_GC_GRACE_SECONDS", "ge": 600})
    gc_interval_seconds: float = field(default=6 * 3600.0, metadata={"env": "DERIVATIVES_GC_INTERVAL", "ge": 0})
    # Postgres connection pool size.
    db_pool_size: int = field(default=10, metadata={"env": "DERIVATIVES_DB_POOL_SIZE", "ge": 1})
    log_level: str = field(
        default="INFO", metadata={"env": "DERIVATIVES_LOG_LEVEL", "choices": LOG_LEVELS, "ignore_case": True}
    )
    # "text" (one readable line per record) or "json" (one JSON object per line, docs/tracing.md).
    log_format: str = field(default="text", metadata={"env": "DERIVATIVES_LOG_FORMAT", "choices": ("text", "json")})

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def buckets(self) -> tuple[str, str, str]:
        return (self.bucket_originals, self.bucket_derivatives, self.bucket_bundles)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings (for worker processes)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out


def _coerce(raw: Any, typ: Any, name: str) -> Any:
    kind = typ if isinstance(typ, type) else {"str": str, "int": int, "float": float, "bool": bool}[str(typ)]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {kind.__name__}, got {raw!r}") from None


def _bounds(meta: Any) -> str:
    parts = [f"{op} {meta[key]}" for key, op in (("gt", ">"), ("ge", ">="), ("le", "<=")) if key in meta]
    return " and ".join(parts)


def _complaint(value: Any, meta: Any) -> str | None:
    """What is wrong with one setting's value under its field's rules, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    too_low = ("gt" in meta and not value > meta["gt"]) or ("ge" in meta and not value >= meta["ge"])
    if too_low or ("le" in meta and not value <= meta["le"]):
        return f"must be {_bounds(meta)}, got {value}"
    if "pattern" in meta and not meta["pattern"].fullmatch(value):
        return f"must match {meta['pattern'].pattern}, got {value!r}"
    if "choices" in meta:
        candidate = value.upper() if meta.get("ignore_case") else value
        if candidate not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            case = " (any case)" if meta.get("ignore_case") else ""
            return f"expected one of {allowed}{case}, got {value!r}"
    if "check" in meta:
        result: str | None = meta["check"](value)
        return result
    return None


def check_settings(settings: Settings) -> None:
    """Raise ValueError naming each out-of-range setting's environment variable and its allowed range."""
    problems = []
    for f in dataclasses.fields(settings):
        complaint = _complaint(getattr(settings, f.name), f.metadata)
        if complaint:
            problems.append(f"{f.metadata['env']}: {complaint}")
    own = [s for s in split_list(settings.import_sources) if s.partition("/")[0] in settings.buckets]
    if own:
        problems.append(f"DERIVATIVES_IMPORT_SOURCES: must not name the service's own buckets, got {own}")
    if settings.server_processes > 1 and settings.listen.startswith(("unix:", "unix-abstract:")):
        problems.append("DERIVATIVES_SERVER_PROCESSES: several processes share a TCP port only, not a unix socket")
    if problems:
        raise ValueError("; ".join(problems))


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ) and the optional TOML file."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    toml_path = env.get("DERIVATIVES_CONFIG", "")
    if toml_path:
        with open(toml_path, "rb") as fh:
            data = tomllib.load(fh)
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{toml_path}: unknown settings {sorted(unknown)}")
        values.update(data)
    for f in dataclasses.fields(Settings):
        if f.metadata["env"] in env:
            values[f.name] = env[f.metadata["env"]]
    coerced = {
        f.name: _coerce(values[f.name], f.type, f.metadata["env"])
        for f in dataclasses.fields(Settings)
        if f.name in values
    }
    settings = Settings(**coerced)
    check_settings(settings)
    return settings


def settings_or_exit() -> Settings:
    """Settings for a command's main(): a bad value prints one line and exits 2, no traceback."""
    import sys

    try:
        return load_settings()
    except (ValueError, OSError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
