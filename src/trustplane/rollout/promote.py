"""Promotion: move a policy from observe to canary or enforce by editing its `@mode` in the
bundle's source directory (the git working tree), never in the store.

The running server picks the edit up like any bundle change (the watcher loads it, runs the
bundle's tests first, and keeps the last good bundle when they fail), so the edit is the whole
promotion and a reviewer reads it as a diff. This module finds the policy's statement, rewrites
its annotations (`@mode`, and `@canary` for a canary), checks the edited bundle still compiles,
and, when asked, commits the file on a new branch with `git`. Whether the promotion is allowed
(the gate, or an override with a reason) is decided before, by the caller.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trustplane.decision.policy_bundle import POLICY_ID_RE
from trustplane.decision.source import split_policies

TARGETS = ("canary", "enforce")


class PromotionError(Exception):
    """A promotion that cannot be made; the message says what and where."""


@dataclass(frozen=True)
class Edit:
    """One policy's new text in one file of the bundle directory."""

    policy_id: str
    path: Path  # the file, inside the bundle directory
    relative: str  # as the bundle names it
    line: int  # the statement's first line
    before: str  # the whole file
    after: str
    mode_before: str
    mode_after: str

    def diff(self) -> str:
        """A unified diff of the file, as `git diff` shows it."""
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                f"a/{self.relative}",
                f"b/{self.relative}",
            )
        )

    def write(self) -> None:
        self.path.write_text(self.after, encoding="utf-8")


_ANNOTATION = r'@{name}\s*\(\s*"([^"]*)"\s*\)'


def _annotation(text: str, name: str) -> re.Match[str] | None:
    return re.search(_ANNOTATION.format(name=name), text)


def plan(directory: Path, policy_id: str, target: str, canary: float | None = None) -> Edit:
    """The edit that puts `policy_id` in `target` mode (`canary` with `canary` percent, or
    `enforce`), found among the directory's `.cedar` files. Raises PromotionError naming the
    problem: an unknown policy, one already in that mode, a bad percentage."""
    if target not in TARGETS:
        raise PromotionError(f"a policy is promoted to {' or '.join(TARGETS)}, not {target!r}")
    if not POLICY_ID_RE.fullmatch(policy_id):
        raise PromotionError(f"{policy_id!r} is not a policy id")
    if target == "canary" and (canary is None or not 0 < canary < 100):
        raise PromotionError("--canary takes a percentage above 0 and below 100")
    if not directory.is_dir():
        raise PromotionError(f"bundle directory {directory} does not exist")
    marker = re.compile(r'@id\s*\(\s*"' + re.escape(policy_id) + r'"\s*\)')
    for path in sorted(directory.rglob("*.cedar")):
        if "tests" in path.relative_to(directory).parts:
            continue
        text = path.read_text(encoding="utf-8")
        for statement in split_policies(text):
            if not marker.search(statement.text):
                continue
            offset = _offset(text, statement.line, statement.text)
            new_statement, before = _rewrite(statement.text, target, canary)
            if new_statement == statement.text:
                shown = f"canary {canary:g}%" if target == "canary" else target
                raise PromotionError(f"{policy_id} is already in {shown} mode")
            after = text[:offset] + new_statement + text[offset + len(statement.text) :]
            return Edit(
                policy_id,
                path,
                path.relative_to(directory).as_posix(),
                statement.line,
                text,
                after,
                before,
                target,
            )
    raise PromotionError(f"no policy {policy_id} in {directory}")


def _offset(text: str, line: int, statement: str) -> int:
    start = 0
    for _ in range(line - 1):
        start = text.index("\n", start) + 1
    found = text.find(statement, start)
    if found < 0:  # split_policies returns slices of the text: not reached
        raise PromotionError("could not locate the policy's statement in its file")
    return found


def _rewrite(statement: str, target: str, canary: float | None) -> tuple[str, str]:
    """The statement with `@mode` (and `@canary`) for `target`, and the mode it had."""
    mode = _annotation(statement, "mode")
    before = mode.group(1) if mode else "enforce"
    if before not in ("observe", "canary"):
        raise PromotionError(
            f"the policy is in {before} mode: only observe and canary policies are promoted"
        )
    share = _annotation(statement, "canary")
    new_mode = f'@mode("{target}")'
    if mode is not None:
        text = statement[: mode.start()] + new_mode + statement[mode.end() :]
    else:  # observe is never the default: not reached for a policy we may promote
        text = new_mode + "\n" + statement
    share = _annotation(text, "canary")
    if target == "canary":
        value = f'@canary("{canary:g}")'
        if share is not None:
            text = text[: share.start()] + value + text[share.end() :]
        else:
            at = _annotation(text, "mode")
            assert at is not None
            text = text[: at.end()] + "\n" + value + text[at.end() :]
    elif share is not None:
        # Drop the @canary annotation with its line when it stands alone on one.
        start, end = share.start(), share.end()
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        if not text[line_start:start].strip() and not text[end:line_end].strip():
            text = text[:line_start] + text[line_end + 1 :]
        else:
            text = text[:start] + text[end:]
    return text, before


def ensure_git(directory: Path) -> None:
    """Refuse early, before anything is asked or written, when `--commit` cannot work."""
    if shutil.which("git") is None:
        raise PromotionError("--commit needs git, and git is not on the PATH")
    if not _git_ok(directory, "rev-parse", "--show-toplevel"):
        raise PromotionError(f"{directory} is not in a git working tree: --commit needs one")


def commit(edit: Edit, directory: Path, branch: str, message: str) -> str:
    """Commit the edited file on a new branch `branch` of the git working tree holding
    `directory` (the branch starts at the current HEAD, and the working tree switches to it);
    returns the new commit's id. PromotionError with git's own words on any failure."""
    if shutil.which("git") is None:
        raise PromotionError("--commit needs git, and git is not on the PATH")
    top = _git(directory, "rev-parse", "--show-toplevel", what="find the git working tree")
    if not top:
        raise PromotionError(f"{directory} is not in a git working tree")
    if _git_ok(directory, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        raise PromotionError(f"branch {branch} already exists: name another with --branch")
    _git(directory, "switch", "-c", branch, what=f"create branch {branch}")
    _git(directory, "add", "--", str(edit.path.resolve()), what="stage the edited file")
    _git(directory, "commit", "-m", message, "--", str(edit.path.resolve()), what="commit")
    return _git(directory, "rev-parse", "HEAD", what="read the new commit")


def _git(directory: Path, *args: str, what: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PromotionError(f"git could not {what}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit {done.returncode}"
        if "not a git repository" in (done.stderr or ""):
            raise PromotionError(f"{directory} is not in a git working tree: --commit needs one")
        raise PromotionError(f"git could not {what}: {reason}")
    return done.stdout.strip()


def _git_ok(directory: Path, *args: str) -> bool:
    done = subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, timeout=60, check=False
    )
    return done.returncode == 0
