"""Where the shared test corpora are: `shared/corpora` beside the checkout or any folder above
it (the layout is `<root>/<checkout>/` and `<root>/shared/`), beside the local checkout a clone
came from (a CI clone in a temporary directory), or the directory `PSA_CORPUS_DIR` names. A
missing corpus skips its tests, except under CI=true, where it fails them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO

PSA_RELATIVE = Path("shared") / "corpora" / "pod-security-admission" / "testdata"


def _origin_parents() -> tuple[Path, ...]:
    """The folders above the checkout this one was cloned from, when it is a local path: a CI
    run on a fresh clone in a temporary directory still finds `shared/` beside the original."""
    try:
        url = subprocess.run(
            ["git", "-C", str(REPO), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ()
    origin = Path(url.removeprefix("file://"))
    return tuple(origin.resolve().parents) if url and origin.is_dir() else ()


def psa_corpus() -> Path:
    override = os.environ.get("PSA_CORPUS_DIR")
    candidates = (
        [Path(override)]
        if override
        else [parent / PSA_RELATIVE for parent in (*REPO.parents, *_origin_parents())]
    )
    for candidate in candidates:
        for path in (candidate, candidate / "testdata"):
            if (path / "baseline").is_dir() and (path / "restricted").is_dir():
                return path
    message = f"Pod Security Admission corpus not found at {candidates[0]} (set PSA_CORPUS_DIR)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
