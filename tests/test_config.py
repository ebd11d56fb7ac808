"""load_settings: defaults, then the TOML file, then TRUSTPLANE_* variables, then explicit flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trustplane.config import ConfigError, Durability, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("TRUSTPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.state_dir == Path(".trustplane")
    assert settings.host == "127.0.0.1" and settings.port == 8181
    assert settings.durability is Durability.BATCH
    assert settings.mask == ["/context/token", "/context/authorization"]
    assert settings.trusted_bundle_keys == [] and settings.bundle_dir is None
    assert settings.expiry_warning_days == 7
    assert settings.effective_database_url == "sqlite:///.trustplane/trustplane.db"
    assert settings.admin_token_file == Path(".trustplane/admin.token")


def test_file_values(tmp_path: Path) -> None:
    config = write(
        tmp_path / "custom.toml",
        'port = 9000\nhost = "0.0.0.0"\ndurability = "sync"\n'
        'mask = ["/context/secret"]\nbundle_dir = "policies"\n'
        'database_url = "postgresql://db/tp"\n',
    )
    settings = load_settings(config)
    assert (settings.port, settings.host) == (9000, "0.0.0.0")
    assert settings.durability is Durability.SYNC
    assert settings.mask == ["/context/secret"]
    assert settings.bundle_dir == Path("policies")
    assert settings.effective_database_url == "postgresql://db/tp"


def test_default_file_in_working_directory_is_read(tmp_path: Path) -> None:
    write(tmp_path / "trustplane.toml", "port = 9001\n")
    assert load_settings().port == 9001


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "trustplane.toml", "port = 9001\n")
    write(tmp_path / "other.toml", "port = 9002\n")
    monkeypatch.setenv("TRUSTPLANE_CONFIG", str(tmp_path / "other.toml"))
    assert load_settings().port == 9002
    # An explicit file beats TRUSTPLANE_CONFIG.
    assert load_settings(tmp_path / "trustplane.toml").port == 9001


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.toml", 'port = 9000\nhost = "10.0.0.1"\nmask = ["/a"]\n')
    monkeypatch.setenv("TRUSTPLANE_PORT", "9100")
    monkeypatch.setenv("TRUSTPLANE_MASK", '["/context/x", "/subject/id"]')
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.mask == ["/context/x", "/subject/id"]
    assert settings.host == "10.0.0.1"  # not set in the environment: the file's value stays


def test_overrides_beat_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.toml", "port = 9000\nwatch = true\n")
    monkeypatch.setenv("TRUSTPLANE_PORT", "9100")
    monkeypatch.setenv("TRUSTPLANE_WATCH", "false")
    settings = load_settings(config, {"port": 9200, "watch": None})
    assert settings.port == 9200
    assert settings.watch is False  # a flag that was not given (None) changes nothing


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("port = 70000\n", "port"),
        ('port = "eighty"\n', "port"),
        ('durability = "eventually"\n', "durability"),
        ("flush_interval_ms = 0\n", "flush_interval_ms"),
        ('database_url = "mysql://db"\n', "database_url"),
        ("prot = 80\n", "prot"),
    ],
)
def test_invalid_file_value_names_field_and_file(tmp_path: Path, toml: str, field: str) -> None:
    config = write(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert f"{field}:" in message
    assert str(config) in message


def test_every_invalid_field_is_reported(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml", 'port = -1\ndurability = "never"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "port:" in str(info.value) and "durability:" in str(info.value)


def test_invalid_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTPLANE_PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"port:"):
        load_settings()


def test_invalid_environment_value_is_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "c.toml", 'host = "0.0.0.0"\n')
    monkeypatch.setenv("TRUSTPLANE_PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "TRUSTPLANE_PORT" in str(info.value)


def test_malformed_toml_is_refused_with_position(tmp_path: Path) -> None:
    config = write(tmp_path / "broken.toml", 'host = "a"\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert str(config) in str(info.value)
    assert "line 2" in str(info.value)


def test_missing_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    monkeypatch.setenv("TRUSTPLANE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml does not exist"):
        load_settings()


@pytest.mark.parametrize("pointer", ["context/token", "", "~0x"])
def test_relative_mask_pointer_is_rejected(tmp_path: Path, pointer: str) -> None:
    config = write(tmp_path / "c.toml", f'mask = ["/context/ok", "{pointer}"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "mask" in str(info.value) and "must start with '/'" in str(info.value)


def test_relative_mask_pointer_from_environment_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTPLANE_MASK", '["context/token"]')
    with pytest.raises(ConfigError, match="mask"):
        load_settings()
