"""The bundle watcher of a running server follows the directory through replacement: removed
and renamed into place (`rm -rf shop && mv backup shop`, as a `git checkout` may), a symlink
swapped to a new release, and a Kubernetes ConfigMap volume's `..data` swap. Every reload is
logged with what changed and the new revision; every refusal with what changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import SHOP
from tests.decision.test_bundle_lifecycle import (
    POLICY_FILE,
    break_bundle,
    edit_description,
    revision,
    status,
)
from tests.support import Server, running_server, wait_for

pytestmark = pytest.mark.slow


def serves(server: Server, marker: str, previous: str) -> str:
    """Wait until a revision other than `previous`, with `marker` in its policies, is active;
    the reload was logged with that revision."""

    def active() -> str | None:
        now = revision(server)
        return (
            now if now != previous and marker in str(status(server)["active"]["policies"]) else None
        )

    new = str(wait_for(active, timeout=20))
    wait_for(lambda: f"revision {new[:12]}, was {previous[:12]}" in server.log(), timeout=10)
    return new


def test_a_directory_removed_and_renamed_into_place_is_followed(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    with running_server(tmp_path / "state", database_url, shop_copy) as server:
        first = revision(server)
        backup = tmp_path / "backup"
        shutil.copytree(shop_copy, backup)
        edit_description(backup, "(restored)")
        shutil.rmtree(shop_copy)
        backup.rename(shop_copy)
        second = serves(server, "(restored)", first)
        # The crux: the new directory is watched, not the removed one.
        edit_description(shop_copy, "(edited after)")
        third = serves(server, "(edited after)", second)
        assert f"modified shop/{POLICY_FILE}" in server.log()

        break_bundle(shop_copy)
        wait_for(lambda: status(server)["last_error"], timeout=20)
        assert revision(server) == third, "a refused bundle never replaces the active one"
        wait_for(lambda: f"(file-change: modified shop/{POLICY_FILE}) refused" in server.log())


def test_a_swapped_symlink_is_followed(tmp_path: Path, database_url: str) -> None:
    releases = tmp_path / "releases"
    shutil.copytree(SHOP, releases / "v1")
    current = tmp_path / "current"
    current.symlink_to("releases/v1")
    with running_server(tmp_path / "state", database_url, current) as server:
        first = revision(server)
        shutil.copytree(SHOP, releases / "v2")
        edit_description(releases / "v2", "(v2)")
        (tmp_path / "current.new").symlink_to("releases/v2")
        os.replace(tmp_path / "current.new", current)  # atomic, as `ln -sfn` + `mv -T`
        second = serves(server, "(v2)", first)
        edit_description(releases / "v2", "(v2 edited)")
        third = serves(server, "(v2 edited)", second)
        assert len({first, second, third}) == 3


def configmap_revision(volume: Path, name: str, files: dict[str, str]) -> None:
    """What the kubelet does to a ConfigMap volume: files in a new hidden directory, `..data`
    swapped to it atomically, the old one removed; the visible names link through `..data`."""
    target = volume / name
    target.mkdir()
    for file, text in files.items():
        (target / file).write_text(text)
        if not (volume / file).is_symlink():
            (volume / file).symlink_to(f"..data/{file}")
    old = (volume / "..data").resolve() if (volume / "..data").is_symlink() else None
    (volume / "..data_tmp").symlink_to(name)
    os.replace(volume / "..data_tmp", volume / "..data")
    if old is not None:
        shutil.rmtree(old)


def test_a_configmap_volume_swap_is_followed(tmp_path: Path, database_url: str) -> None:
    files = {p.name: p.read_text() for p in SHOP.iterdir() if p.is_file()}
    volume = tmp_path / "bundle"
    volume.mkdir()
    configmap_revision(volume, "..2026_01_01_00_00_00.1", files)
    with running_server(tmp_path / "state", database_url, volume) as server:
        first = revision(server)
        edited = tmp_path / "edited"
        edited.mkdir()
        (edited / POLICY_FILE).write_text(files[POLICY_FILE])
        edit_description(edited, "(configmap v2)")
        files[POLICY_FILE] = (edited / POLICY_FILE).read_text()
        configmap_revision(volume, "..2026_01_01_00_05_00.2", files)
        assert serves(server, "(configmap v2)", first) != first
