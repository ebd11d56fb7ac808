"""Drift without a server: files added, removed and changed between the active revision and a
directory or a git ref (read with git archive, the working tree untouched), and incidents
opened once and cleared (both backends)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from tests.conftest import SHOP
from trustplane.decision.policy_bundle import BundleSource
from trustplane.rollout.drift import DriftLog, compare, drift_of, read_dir, read_git
from trustplane.store.tables import policy_drift


def git(directory: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-C", str(directory), *args],
        check=True,
        capture_output=True,
    )


def test_files_added_removed_and_changed_are_named() -> None:
    active = {"a.cedar": b"1", "b.cedar": b"2", "c.cedar": b"3"}
    source = {"a.cedar": b"1", "b.cedar": b"two", "d.cedar": b"4"}
    assert compare(active, source) == (["d.cedar"], ["c.cedar"], ["b.cedar"])


def test_a_git_ref_is_read_without_touching_the_working_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    bundle = repo / "policies" / "shop"
    shutil.copytree(SHOP, bundle)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "shop")
    committed = read_git("HEAD", bundle)
    assert committed.revision == BundleSource.from_dir(SHOP).revision

    (bundle / "humans.cedar").write_text("// edited, not committed\n")
    (bundle / "extra.cedar").write_text("")
    working = read_dir(bundle)
    drift = drift_of(working.revision, dict(working.files), "git:HEAD", lambda: committed)
    assert (drift.in_sync, drift.changed, drift.removed) == (
        False,
        ["humans.cedar"],
        ["extra.cedar"],
    )
    assert (bundle / "humans.cedar").read_text() == "// edited, not committed\n"

    unknown = drift_of(None, {}, "git:nope", lambda: read_git("no-such-ref", bundle))
    assert not unknown.in_sync and unknown.source_revision is None
    assert unknown.error is not None and unknown.error.startswith("source unreadable: git")


def test_an_incident_is_opened_once_and_cleared(engine: Engine) -> None:
    log = DriftLog(engine)
    drifted = drift_of("r1", {"a.cedar": b"1"}, "shop", lambda: BundleSource({"a.cedar": b"2"}))
    synced = drift_of("r1", {"a.cedar": b"1"}, "shop", lambda: BundleSource({"a.cedar": b"1"}))
    assert log.note(synced) is None
    assert log.note(drifted, now=1_800_000_000.0) == "detected"
    assert log.note(drifted) is None  # still the same incident
    assert log.open_incident() is not None
    assert log.note(synced, now=1_800_000_060.0) == "cleared"
    assert log.open_incident() is None
    assert log.note(drifted, now=1_800_000_120.0) == "detected"
    history = log.history()
    month = datetime.fromtimestamp(1_800_000_000, UTC).strftime("%Y-%m")
    assert history["months"] == [{"month": month, "incidents": 2}]
    first = history["incidents"][-1]
    assert (first["changed"], first["cleared_at"]) == (["a.cedar"], pytest.approx(1_800_000_060.0))


def test_the_store_keeps_one_incident_open_whoever_detects_it(engine: Engine) -> None:
    """Workers and replicas check on their own: the store refuses a second open incident, so
    two detecting the same drift at once record it once."""
    drifted = drift_of("r1", {"a.cedar": b"1"}, "shop", lambda: BundleSource({}))
    assert DriftLog(engine).note(drifted) == "detected"
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            insert(policy_drift).values(
                detected_at=1.0, revision="r1", source="shop", files="{}", is_open=True
            )
        )
    assert len(DriftLog(engine).history()["incidents"]) == 1
