from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings, load_settings


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
