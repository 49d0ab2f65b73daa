from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import RULE_KEYS, Settings, load_settings, settings_or_exit, split_listen


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.max_message_bytes >= 32 * 1024 * 1024


def test_environment_overrides_toml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('listen = "0.0.0.0:1"\nworkers = 3\ns3_secure = true\n')
    settings = load_settings({"DERIVATIVES_CONFIG": str(toml), "DERIVATIVES_WORKERS": "5"})
    assert (settings.listen, settings.workers, settings.s3_secure) == ("0.0.0.0:1", 5, True)


def test_round_trip_through_environment() -> None:
    settings = load_settings({"DERIVATIVES_STORAGE": "s3", "S3_SECURE": "yes", "DERIVATIVES_WORKERS": "2"})
    assert load_settings(settings.as_env()) == settings


@pytest.mark.parametrize(
    "env",
    [{"DERIVATIVES_WORKERS": "many"}, {"DERIVATIVES_STORAGE": "tape"}, {"S3_SECURE": "maybe"}],
)
def test_bad_values_are_refused_with_the_variable_name(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(env))):
        load_settings(env)


def test_unknown_toml_keys_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("lisen = 1\n")
    with pytest.raises(ValueError, match="lisen"):
        load_settings({"DERIVATIVES_CONFIG": str(toml)})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DERIVATIVES_PDF_DPI": "0"}, "DERIVATIVES_PDF_DPI: must be > 0 and <= 2400, got 0.0"),
        ({"DERIVATIVES_PDF_DPI": "2401"}, "DERIVATIVES_PDF_DPI: must be > 0 and <= 2400, got 2401.0"),
        ({"DERIVATIVES_PDF_DPI": "nan"}, "DERIVATIVES_PDF_DPI: must be a finite number, got nan"),
        ({"DERIVATIVES_JOB_LEASE_SECONDS": "inf"}, "DERIVATIVES_JOB_LEASE_SECONDS: must be a finite number"),
        ({"DERIVATIVES_BUNDLE_CACHE_BYTES": "-1"}, "DERIVATIVES_BUNDLE_CACHE_BYTES: must be >= 0, got -1"),
        ({"DERIVATIVES_WORKERS": "-1"}, "DERIVATIVES_WORKERS: must be >= 0, got -1"),
        (
            {"DERIVATIVES_MAX_MESSAGE_BYTES": str(2**31)},
            "DERIVATIVES_MAX_MESSAGE_BYTES: must be >= 1 and <= 2147483647",
        ),
        ({"DERIVATIVES_URL_EXPIRY": "604801"}, "DERIVATIVES_URL_EXPIRY: must be >= 1 and <= 604800"),
        ({"DERIVATIVES_PDF_RENDER_DPI": "1201"}, "DERIVATIVES_PDF_RENDER_DPI: must be > 0 and <= 1200"),
        ({"DERIVATIVES_HEALTH_INTERVAL": "0"}, "DERIVATIVES_HEALTH_INTERVAL: must be > 0"),
        ({"DERIVATIVES_DB_POOL_SIZE": "0"}, "DERIVATIVES_DB_POOL_SIZE: must be >= 1"),
        ({"DERIVATIVES_LISTEN": ""}, "DERIVATIVES_LISTEN: must be host:port"),
        ({"DERIVATIVES_LISTEN": "localhost"}, "DERIVATIVES_LISTEN: must be host:port"),
        ({"DERIVATIVES_LOG_LEVEL": "verbose"}, "DERIVATIVES_LOG_LEVEL: expected one of"),
        ({"DERIVATIVES_PDF_DERIVATIVE": "Download-Medium"}, "DERIVATIVES_PDF_DERIVATIVE: must match"),
        ({"DERIVATIVES_BUCKET_BUNDLES": "My_Bucket"}, "DERIVATIVES_BUCKET_BUNDLES: must match"),
    ],
)
def test_out_of_range_values_name_the_variable_and_the_range(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError) as info:
        load_settings(env)
    assert str(info.value).startswith(expected)


def test_out_of_range_toml_values_are_refused_too(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("pdf_dpi = nan\nworkers = -2\n")
    with pytest.raises(ValueError) as info:
        load_settings({"DERIVATIVES_CONFIG": str(toml)})
    # Every problem is reported at once, each under its environment variable.
    assert "DERIVATIVES_PDF_DPI: must be a finite number" in str(info.value)
    assert "DERIVATIVES_WORKERS: must be >= 0, got -2" in str(info.value)


def test_boundary_values_are_accepted() -> None:
    settings = load_settings(
        {
            "DERIVATIVES_WORKERS": "0",
            "DERIVATIVES_BUNDLE_CACHE_BYTES": "0",
            "DERIVATIVES_SHUTDOWN_GRACE": "0",
            "DERIVATIVES_URL_EXPIRY": "604800",
            "DERIVATIVES_MAX_MESSAGE_BYTES": str(2**31 - 1),
            "DERIVATIVES_PDF_DPI": "2400",
            "DERIVATIVES_LISTEN": "[::]:0",
            "DERIVATIVES_LOG_LEVEL": "debug",
        }
    )
    assert (settings.workers, settings.url_expiry_seconds, settings.log_level) == (0, 604800, "debug")


@pytest.mark.parametrize("listen", ["unix:/tmp/derivatives.sock", "unix-abstract:derivatives", ":50051", "[::1]:50051"])
def test_every_grpc_address_form_is_accepted(listen: str) -> None:
    assert load_settings({"DERIVATIVES_LISTEN": listen}).listen == listen


@pytest.mark.parametrize(
    ("listen", "split"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:0", ("::", 0)),
        (":8080", ("", 8080)),  # every interface
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_a_listen_address_splits_one_way_everywhere(listen: str, split: tuple[str, int]) -> None:
    assert split_listen(listen) == split


@pytest.mark.parametrize("listen", ["127.0.0.1", "host:", "host:65536", "host:http", "host:-1", "host:\u0663"])
def test_a_bad_listen_address_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        split_listen(listen)
    with pytest.raises(ValueError, match="DERIVATIVES_METRICS_LISTEN: must be host:port"):
        load_settings({"DERIVATIVES_METRICS_LISTEN": listen})


@pytest.mark.parametrize("level", ["WARN", "fatal", "Warning"])
def test_logging_level_aliases_are_accepted(level: str) -> None:
    assert load_settings({"DERIVATIVES_LOG_LEVEL": level}).log_level == level


def test_pdf_render_dpi_loads_from_environment() -> None:
    assert load_settings({}).pdf_render_dpi == 150.0
    settings = load_settings({"DERIVATIVES_PDF_RENDER_DPI": "300"})
    assert (settings.pdf_render_dpi, settings.pdf_dpi) == (300.0, 150.0)
    assert settings.as_env()["DERIVATIVES_PDF_RENDER_DPI"] == "300.0"


def test_every_rule_key_is_known() -> None:
    # A misspelt rule ("min", "lt") would silently check nothing.
    for f in dataclasses.fields(Settings):
        assert set(f.metadata) <= {"env"} | RULE_KEYS, f.name


def test_settings_or_exit_prints_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DERIVATIVES_PDF_DPI", "0")
    monkeypatch.delenv("DERIVATIVES_CONFIG", raising=False)
    with pytest.raises(SystemExit) as info:
        settings_or_exit()
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("configuration error: DERIVATIVES_PDF_DPI: must be > 0")


def test_storage_uses_the_same_bucket_rule() -> None:
    from core import ids, storage

    assert storage.BUCKET_NAME is ids.BUCKET_NAME
