"""load_settings: defaults, then the TOML file, then TRUSTPLANE_* variables, then explicit flags;
settings in sections (`[ledger]` in the file, `TRUSTPLANE_LEDGER__...` in the environment), and
every refusal names the field and where its value came from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustplane.config import (
    RENAMED,
    ConfigError,
    Durability,
    Settings,
    env_name,
    load_settings,
)
from trustplane.errors import TrustplaneError


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
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8181
    assert settings.ledger.durability is Durability.BATCH
    assert settings.ledger.mask == ["/context/token", "/context/authorization"]
    assert settings.policy.trusted_key_files == [] and settings.policy.bundle_dir is None
    assert settings.policy.expiry_warning_days == 7
    assert settings.effective_database_url == "sqlite:///.trustplane/trustplane.db"
    assert settings.admin_token_file == Path(".trustplane/admin.token")


def test_file_values(tmp_path: Path) -> None:
    config = write(
        tmp_path / "custom.toml",
        '[server]\nport = 9000\nhost = "0.0.0.0"\n'
        '[ledger]\ndurability = "sync"\nmask = ["/context/secret"]\n'
        '[policy]\nbundle_dir = "policies"\n'
        '[store]\nurl = "postgresql://db/tp"\n',
    )
    settings = load_settings(config)
    assert (settings.server.port, settings.server.host) == (9000, "0.0.0.0")
    assert settings.ledger.durability is Durability.SYNC
    assert settings.ledger.mask == ["/context/secret"]
    assert settings.policy.bundle_dir == Path("policies")
    assert settings.effective_database_url == "postgresql://db/tp"


def test_default_file_in_working_directory_is_read(tmp_path: Path) -> None:
    write(tmp_path / "trustplane.toml", "[server]\nport = 9001\n")
    assert load_settings().server.port == 9001


def test_settings_built_directly_read_no_file(tmp_path: Path) -> None:
    write(tmp_path / "trustplane.toml", "[server]\nport = 9001\n")
    assert Settings().server.port == 8181, "only load_settings reads the config file"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "trustplane.toml", "[server]\nport = 9001\n")
    write(tmp_path / "other.toml", "[server]\nport = 9002\n")
    monkeypatch.setenv("TRUSTPLANE_CONFIG", str(tmp_path / "other.toml"))
    assert load_settings().server.port == 9002
    # An explicit file beats TRUSTPLANE_CONFIG.
    assert load_settings(tmp_path / "trustplane.toml").server.port == 9001


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path / "c.toml",
        '[server]\nport = 9000\nhost = "10.0.0.1"\n[ledger]\nmask = ["/a"]\ndurability = "sync"\n',
    )
    monkeypatch.setenv("TRUSTPLANE_SERVER__PORT", "9100")
    monkeypatch.setenv("TRUSTPLANE_LEDGER__MASK", '["/context/x", "/subject/id"]')
    settings = load_settings(config)
    assert settings.server.port == 9100
    assert settings.ledger.mask == ["/context/x", "/subject/id"]
    # Not set in the environment: the file's values in the same sections stay.
    assert settings.server.host == "10.0.0.1"
    assert settings.ledger.durability is Durability.SYNC


def test_nested_environment_names_reach_every_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTPLANE_GRPC__ENABLED", "false")
    monkeypatch.setenv("TRUSTPLANE_IDENTITY__TRUST_DOMAIN", "shop.example")
    monkeypatch.setenv("TRUSTPLANE_ADMISSION__ENFORCE", '["pss-restricted"]')
    monkeypatch.setenv(
        "TRUSTPLANE_ADMISSION__NAMESPACES", '{"kube-system": {"enforce": [], "warn": []}}'
    )
    monkeypatch.setenv("TRUSTPLANE_GOVERNANCE__INTERVAL_MS", "250")
    settings = load_settings()
    assert settings.grpc.enabled is False
    assert settings.identity.trust_domain == "shop.example"
    assert settings.admission.enforce == ["pss-restricted"]
    assert settings.admission.warn == ["pss-restricted"], "unset modes keep their default"
    assert settings.admission.namespaces["kube-system"].enforce == []
    assert settings.governance.interval_ms == 250


def test_overrides_beat_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.toml", "[server]\nport = 9000\n[policy]\nwatch = true\n")
    monkeypatch.setenv("TRUSTPLANE_SERVER__PORT", "9100")
    monkeypatch.setenv("TRUSTPLANE_POLICY__WATCH", "false")
    settings = load_settings(config, {"server": {"port": 9200}, "policy.watch": None})
    assert settings.server.port == 9200
    assert settings.policy.watch is False  # a flag that was not given (None) changes nothing


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nport = "eighty"\n', "server.port"),
        ('[ledger]\ndurability = "eventually"\n', "ledger.durability"),
        ("[ledger]\nflush_interval_ms = 0\n", "ledger.flush_interval_ms"),
        ('[store]\nurl = "mysql://db"\n', "store.url"),
        ("[server]\nprot = 80\n", "server.prot"),
        ("prot = 80\n", "prot"),
    ],
)
def test_invalid_file_value_names_field_and_file(tmp_path: Path, toml: str, field: str) -> None:
    config = write(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert f"{field}:" in message
    assert f"(from file {config})" in message


def test_every_invalid_field_is_reported(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml", '[server]\nport = -1\n[ledger]\ndurability = "never"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "server.port:" in str(info.value) and "ledger.durability:" in str(info.value)


def test_invalid_environment_value_names_the_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTPLANE_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "server.port:" in str(info.value)
    assert "(from environment TRUSTPLANE_SERVER__PORT)" in str(info.value)


def test_invalid_environment_value_is_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "c.toml", '[server]\nhost = "0.0.0.0"\nport = 9000\n')
    monkeypatch.setenv("TRUSTPLANE_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "(from environment TRUSTPLANE_SERVER__PORT)" in str(info.value)
    assert str(config) not in str(info.value)


def test_a_section_level_problem_names_the_variables_that_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTPLANE_TLS__FROM_CA", "true")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "tls.from_ca needs tls.dns_names" in str(info.value)
    assert "(from environment TRUSTPLANE_TLS__FROM_CA)" in str(info.value)


def test_an_invalid_flag_is_blamed_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"server\.port: .*\(from command line\)"):
        load_settings(overrides={"server": {"port": -5}})


def test_names_from_before_the_sections_are_refused_with_the_new_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUSTPLANE_FLUSH_INTERVAL_MS", "20")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "TRUSTPLANE_FLUSH_INTERVAL_MS is no longer read" in str(info.value)
    assert "use TRUSTPLANE_LEDGER__FLUSH_INTERVAL_MS" in str(info.value)
    monkeypatch.delenv("TRUSTPLANE_FLUSH_INTERVAL_MS")
    config = write(tmp_path / "old.toml", 'bundle_dir = "policies"\n')
    with pytest.raises(ConfigError, match=r"bundle_dir: now policy\.bundle_dir \(from file "):
        load_settings(config)


def test_every_old_name_maps_to_a_setting() -> None:
    defaults = Settings().model_dump()
    for old, new in RENAMED.items():
        section, name = new.split(".")
        assert name in defaults[section], f"{old} -> {new}"
        assert env_name(new) == f"TRUSTPLANE_{section.upper()}__{name.upper()}"


def test_malformed_toml_is_refused_with_position(tmp_path: Path) -> None:
    config = write(tmp_path / "broken.toml", '[server]\nhost = "a"\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert str(config) in str(info.value)
    assert "line 3" in str(info.value)


def test_missing_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    monkeypatch.setenv("TRUSTPLANE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml does not exist"):
        load_settings()


def test_a_config_error_is_a_trustplane_error_with_exit_status_2() -> None:
    with pytest.raises(TrustplaneError) as info:
        load_settings(overrides={"server": {"port": -1}})
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("pointer", ["context/token", "", "~0x"])
def test_relative_mask_pointer_is_rejected(tmp_path: Path, pointer: str) -> None:
    config = write(tmp_path / "c.toml", f'[ledger]\nmask = ["/context/ok", "{pointer}"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "ledger.mask" in str(info.value) and "must start with '/'" in str(info.value)
    assert f"(from file {config})" in str(info.value)


def test_relative_mask_pointer_from_environment_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTPLANE_LEDGER__MASK", '["context/token"]')
    with pytest.raises(ConfigError, match=r"ledger\.mask.*TRUSTPLANE_LEDGER__MASK"):
        load_settings()


def test_the_settings_reference_in_the_docs_is_current() -> None:
    root = next(p for p in Path(__file__).resolve().parents if (p / "scripts").is_dir())
    script = root / "scripts" / "settings_reference.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
