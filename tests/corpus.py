"""Where the shared test corpora are: `shared/corpora` beside the checkout or beside any folder
above it (the layout is `<root>/<checkout>/` and `<root>/shared/`, and a CI clone may sit one
level deeper), or the directory `PSA_CORPUS_DIR` names. A missing
corpus skips its tests, except under CI=true, where it fails them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import REPO

PSA_RELATIVE = Path("shared") / "corpora" / "pod-security-admission" / "testdata"


def psa_corpus() -> Path:
    override = os.environ.get("PSA_CORPUS_DIR")
    candidates = (
        [Path(override)] if override else [parent / PSA_RELATIVE for parent in REPO.parents]
    )
    for candidate in candidates:
        for path in (candidate, candidate / "testdata"):
            if (path / "baseline").is_dir() and (path / "restricted").is_dir():
                return path
    message = f"Pod Security Admission corpus not found at {candidates[0]} (set PSA_CORPUS_DIR)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
