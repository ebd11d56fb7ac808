"""Follow a bundle directory on disk through edits and through replacement.

An inotify watch (watchfiles) follows an inode, not a name. Replacing the directory
(`rm -rf shop && mv backup shop`, a `git checkout` that recreates it, a symlink swapped to a new
release) leaves a watch on the old inode that never fires again, and edits to the new directory
went unseen. So two watches run together: the directory's parent, not recursively, for its entry
in the parent (created, deleted, renamed, a symlink replaced), and the directory itself,
recursively, for edits inside (Kubernetes ConfigMap volumes swap a `..data` symlink inside the
mounted directory: an edit inside). After each reload the directory's identity (its resolved
path and inode) is compared with the one watched, and the watches start again on the new one.

Events from both watches within `debounce_ms` make one reload, announced with what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

log = logging.getLogger("trustplane.bundle")

Changes = set[tuple[Change, str]]
_RETRY_SECONDS = 1.0
_LISTED = 8  # changed paths named in a log line; the rest are counted


class BundleWatcher:
    def __init__(
        self,
        directory: Path,
        reload: Callable[[str], Awaitable[None]],
        *,
        debounce_ms: int = 300,
        step_ms: int = 100,
    ) -> None:
        self._directory = directory.absolute()
        self._reload = reload
        self._debounce = debounce_ms
        self._step = step_ms

    async def run(self) -> None:
        """Watch until cancelled: reload on every change, through any number of replacements."""
        while True:
            watched = _identity(self._directory)
            queue: asyncio.Queue[Changes | BaseException] = asyncio.Queue()
            stop = asyncio.Event()
            pumps = [
                asyncio.create_task(
                    self._pump(self._directory.parent, False, queue, stop, self._own_entry)
                )
            ]
            if watched is not None:
                pumps.append(
                    asyncio.create_task(
                        self._pump(Path(watched[0]), True, queue, stop, DefaultFilter())
                    )
                )
            try:
                await self._follow(queue, watched)
            finally:
                stop.set()
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)

    async def _follow(
        self, queue: asyncio.Queue[Changes | BaseException], watched: tuple[str, int, int] | None
    ) -> None:
        """Reload on each batch of changes until the directory is no longer the one watched."""
        while True:
            first = await queue.get()
            if isinstance(first, BaseException):
                log.warning(
                    "watching bundle directory %s failed (%s); watching again in %.0f s",
                    self._directory,
                    first,
                    _RETRY_SECONDS,
                )
                await asyncio.sleep(_RETRY_SECONDS)
                return
            changes = set(first)
            await asyncio.sleep(self._debounce / 1000)  # the other watch's share of this change
            while not queue.empty():
                more = queue.get_nowait()
                if isinstance(more, BaseException):
                    queue.put_nowait(more)
                    break
                changes |= more
            await self._reload(self.describe(changes))
            now = _identity(self._directory)
            if now != watched:
                if now is None:
                    log.warning("bundle directory %s is gone; waiting for it", self._directory)
                else:
                    log.info("bundle directory %s replaced; watching %s", self._directory, now[0])
                return

    async def _pump(
        self,
        path: Path,
        recursive: bool,
        queue: asyncio.Queue[Changes | BaseException],
        stop: asyncio.Event,
        watch_filter: Callable[[Change, str], bool],
    ) -> None:
        try:
            async for changes in awatch(
                path,
                watch_filter=watch_filter,
                recursive=recursive,
                stop_event=stop,
                debounce=self._debounce,
                step=self._step,
            ):
                queue.put_nowait(changes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the parent is gone too, permissions: watch again later
            queue.put_nowait(exc)

    def _own_entry(self, _change: Change, path: str) -> bool:
        """In the parent, only the directory's own name matters."""
        return Path(path).name == self._directory.name

    def describe(self, changes: Changes) -> str:
        """`modified services.cedar; deleted shop` — paths relative to the directory's parent."""
        by_kind: dict[str, list[str]] = {}
        for change, path in sorted(changes, key=lambda c: (c[0].name, c[1])):
            by_kind.setdefault(change.name, []).append(
                os.path.relpath(path, self._directory.parent)
            )
        parts = []
        for kind, paths in by_kind.items():
            shown = ", ".join(paths[:_LISTED])
            if len(paths) > _LISTED:
                shown += f" and {len(paths) - _LISTED} more"
            parts.append(f"{kind} {shown}")
        return "; ".join(parts)


def _identity(directory: Path) -> tuple[str, int, int] | None:
    """The directory the name leads to now (resolved path, device, inode); None if none."""
    with contextlib.suppress(OSError):
        resolved = directory.resolve(strict=True)
        status = resolved.stat()
        if resolved.is_dir():
            return str(resolved), status.st_dev, status.st_ino
    return None
