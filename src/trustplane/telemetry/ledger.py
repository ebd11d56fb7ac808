"""The decision ledger: records as leaves of an append-only RFC 9162 Merkle tree in the store,
with signed C2SP checkpoints and inclusion/consistency proofs.

Several appenders may share one store (serving workers, replicas on PostgreSQL). Each append
transaction first updates the single `ledger_lock` row, which serialises appenders in the
database; holding it, the appender loads any leaves others committed since its last append, then
inserts after them. The tree in the store is never forked, and no appender has to retry.

A record the store refuses as a `decisions` row (a data error, not a lost connection) never
blocks the records behind it: the batch is split until the refused record stands alone, and that
record goes to `ledger_quarantine` with the reason, keeping its leaf's place in the tree. Leaves
are read from both tables, so proofs, export and `audit verify` cover quarantined records too.
"""

from __future__ import annotations

import base64
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, Engine, func, insert, or_, select, union_all, update
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)

from trustplane.errors import TrustplaneError
from trustplane.model import CALLING_PEP, TRACE_ID, AccessRequest, Decision, Effect, PolicyReason
from trustplane.store.tables import checkpoints, decisions, ledger_quarantine, rollout_evidence
from trustplane.store.text import column_text
from trustplane.telemetry.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    sign_checkpoint,
)
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.merkle import Frontier, MerkleTree, ProofError, leaf_hash
from trustplane.telemetry.query import (
    DecisionQuery as DecisionQuery,  # re-exported: where queries are asked
)
from trustplane.telemetry.query import (
    EntityFilter,
    determining_policies,
    reason_code,
)
from trustplane.telemetry.rowcheck import QUERY_COLUMNS, RecordError, evidence, query_columns

log = logging.getLogger("trustplane.ledger")

_LOAD_CHUNK = 50_000
_TAKE_LOCK = "UPDATE ledger_lock SET appends = appends + 1 WHERE id = 1"
_APPENDS = "SELECT appends FROM ledger_lock WHERE id = 1"
_ROWS_PER_STATEMENT = 500
_COLUMNS = (
    "seq",
    "decision_id",
    "ts",
    "kind",
    "principal",
    "action",
    "resource",
    "decision",
    "shadow",
    "policies",
    "revision",
    "record",
    "leaf_hash",
)


class LedgerError(TrustplaneError):
    """A proof or record was asked for that the ledger cannot give; the message says why."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One record ready to append: the canonical bytes (the leaf) and its query columns."""

    decision_id: str
    ts: float
    kind: str
    principal: str
    action: str
    resource: str
    decision: str
    shadow: str
    policies: str
    revision: str | None
    record: bytes
    leaf_hash: bytes

    def values(self, seq: int) -> tuple[Any, ...]:
        """Column values in `_COLUMNS` order: text in the form every backend stores
        (store/text.py); the record keeps the exact values."""
        return (
            seq,
            self.decision_id,
            self.ts,
            self.kind,
            column_text(self.principal, 400),
            column_text(self.action, 400),
            column_text(self.resource, 400),
            self.decision,
            self.shadow,
            column_text(self.policies),
            None if self.revision is None else column_text(self.revision, 64),
            self.record,
            self.leaf_hash,
        )


def refused_by_store(exc: BaseException) -> bool:
    """Whether the store refused the data itself (a value no column takes, a duplicate id), as
    opposed to being unreachable or misconfigured: only then does retrying the same rows fail
    the same way forever."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, DataError | IntegrityError) and not exc.connection_invalidated
    if isinstance(exc, OperationalError | InterfaceError):
        return False
    return isinstance(exc, StatementError | UnicodeError | ValueError | OverflowError)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _record_bytes(record: dict[str, Any]) -> bytes:
    """The record's canonical JSON, whatever it holds. Requests are checked when parsed
    (decision/requests.py: check_values), but a decision that was counted must be recorded even
    if a value slipped past (a claim of a trusted token, a future adapter): such values are
    written as strings and the record says so (`"unencodable": true`)."""
    try:
        return canonical_json(record)
    except orjson.JSONEncodeError:
        return canonical_json({**_encodable(record, 0), "unencodable": True})


def _encodable(value: Any, depth: int) -> Any:
    if depth > 200:  # orjson refuses 255 levels
        return "(nested too deeply to record)"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {_encodable(str(k), depth): _encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v, depth + 1) for v in value]
    return _encodable(str(value), depth)


def rfc3339(ts: float) -> str:
    """UTC with microseconds and a Z, e.g. 2026-11-22T07:16:22.123456Z."""
    seconds = int(ts)
    micros = round((ts - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return f"{_rfc3339_seconds(seconds)}.{micros:06d}Z"


@functools.lru_cache(maxsize=4)
def _rfc3339_seconds(seconds: int) -> str:
    # Every record of the same second shares this prefix: format it once, not per decision.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


# Enum `.value` is a descriptor call; on the decision path a dict lookup is several times cheaper.
_EFFECT_TEXT = {effect: effect.value for effect in Effect}


def decision_entry(request: AccessRequest, decision: Decision, masker: Masker) -> LedgerEntry:
    """The ledger record of a decision, with masked input."""
    effect, shadow = _EFFECT_TEXT[decision.effect], _EFFECT_TEXT[decision.shadow_effect]
    document, masked = masker.apply(request.as_document())
    # Each list is built once and only when there is something in it (most are empty).
    determining = _policy_ids(decision.reasons)
    shadow_ids = _policy_ids(decision.shadow_reasons)
    changed_ids = _policy_ids(decision.shadow_changes)
    record = {
        "kind": "decision",
        "decision_id": decision.decision_id,
        "time": rfc3339(decision.timestamp),
        "request": document,
        "masked": masked,
        "decision": effect,
        "shadow": shadow,
        "reasons": determining,
        "shadow_reasons": shadow_ids,
        "would_change": changed_ids,
        "errors": list(decision.errors),
        "revision": decision.revision,
        "eval_micros": decision.eval_micros,
    }
    pep = CALLING_PEP.get()
    if pep is not None:  # asked through a decision endpoint: which enforcement point asked
        record["pep"] = pep
    trace_id = TRACE_ID.get()
    if trace_id is not None:  # answered while tracing: the trace the decision belongs to
        record["trace_id"] = trace_id
    if decision.grant_ids:  # decisions under a grant: `access activity GRANT` finds them
        record["grants"] = list(decision.grant_ids)
    if decision.exception_ids:
        record["exceptions"] = list(decision.exception_ids)
    if decision.trust is not None:  # the score with each signal's value, points and source
        record["trust"] = decision.trust
    if decision.canary:  # each canary policy's cohort: the gates read each apart
        record["canary"] = dict(decision.canary)
    return _entry(record, decision.timestamp)


def _entry(record: dict[str, Any], ts: float) -> LedgerEntry:
    """The record's leaf and the query columns derived from it by `rowcheck.query_columns`,
    the function `audit verify` checks stored columns with."""
    data = _record_bytes(record)
    decision_id, kind, principal, action, resource, effect, shadow, policies, revision = (
        query_columns(record)
    )
    return LedgerEntry(
        decision_id=decision_id,
        ts=ts,
        kind=kind,
        principal=principal,
        action=action,
        resource=resource,
        decision=effect,
        shadow=shadow,
        policies=policies,
        revision=revision,
        record=data,
        leaf_hash=leaf_hash(data),
    )


def _evidence_rows(entries: Sequence[LedgerEntry], start: int) -> list[dict[str, Any]]:
    """The `rollout_evidence` rows of entries stored from `start` (rowcheck.evidence); only
    would-denies and denials naming canary cohorts are read again, most records are neither."""
    found: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if entry.kind != "decision":
            continue
        would_deny = entry.decision == "allow" and entry.shadow == "deny"
        if not would_deny and not (entry.decision == "deny" and b'"canary":' in entry.record):
            continue
        for policy_id, cohort in evidence(orjson.loads(entry.record)):
            found.append(
                {
                    "policy_id": column_text(policy_id, 400),
                    "seq": start + i,
                    "decision_id": entry.decision_id,
                    "ts": entry.ts,
                    "principal": column_text(entry.principal, 400),
                    "cohort": cohort,
                }
            )
    return found


def _policy_ids(reasons: tuple[PolicyReason, ...]) -> list[str]:
    return [r.policy_id for r in reasons] if reasons else []


def admin_entry(
    actor: str,
    action: str,
    target: str,
    reason: str,
    allowed: bool,
    details: dict[str, Any] | None = None,
    now: float | None = None,
) -> LedgerEntry:
    """The ledger record of an admin action: who (`actor`), what (`action` on `target`), why
    (`reason`), and whether the admin policy allowed it. Same tree as decisions."""
    from trustplane.model import new_decision_id

    ts = time.time() if now is None else now
    effect = "allow" if allowed else "deny"
    record_id = new_decision_id()
    record = {
        "kind": "admin",
        "decision_id": record_id,
        "time": rfc3339(ts),
        "actor": actor,
        "action": action,
        "target": target,
        "reason": reason,
        "decision": effect,
        "details": details or {},
    }
    return _entry(record, ts)


def search_entry(
    search: str,
    request: AccessRequest,
    masker: Masker,
    results: list[dict[str, Any]],
    next_token: str,
    evaluated: int,
    revision: str | None,
    eval_micros: int,
    now: float | None = None,
) -> LedgerEntry:
    """The ledger record of one AuthZEN search page (outcomes/search.py): what was asked
    (masked like a decision's request; the searched member's id is `*`), every result
    answered, the cursor handed back and how many candidates were evaluated. A search is a
    decision about many entities at once, so it is recorded like one, in the same tree."""
    from trustplane.model import new_decision_id

    ts = time.time() if now is None else now
    document, masked = masker.apply(request.as_document())
    record: dict[str, Any] = {
        "kind": "search",
        "decision_id": new_decision_id(),
        "time": rfc3339(ts),
        "search": search,
        "request": document,
        "masked": masked,
        "decision": "allow" if results else "deny",
        "results": results,
        "next_token": next_token,
        "evaluated": evaluated,
        "revision": revision,
        "eval_micros": eval_micros,
    }
    pep = CALLING_PEP.get()
    if pep is not None:
        record["pep"] = pep
    return _entry(record, ts)


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root_hash: bytes
    note: str
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.size,
            "root_hash": _b64(self.root_hash),
            "checkpoint": self.note,
            "created_at": rfc3339(self.created_at),
        }


class Ledger:
    def __init__(self, engine: Engine, signer: NoteSigner | None, origin: str) -> None:
        """`signer` None opens the ledger read-only: proofs and queries, no checkpoints."""
        self._engine = engine
        self._signer = signer
        self.origin = origin
        self._tree = MerkleTree()
        self._append_lock = threading.Lock()
        # The ledger_lock append count after this process's last committed append (None: not
        # known, so the next append reads the leaves others appended).
        self._appends: int | None = None
        self.quarantined = 0  # records this process put in quarantine (or was told of)
        self._catch_up()
        self._last_checkpoint_size = self._max_checkpoint_size()

    @property
    def size(self) -> int:
        return self._tree.size

    @property
    def verifier_key(self) -> str:
        if self._signer is None:
            raise LedgerError("ledger opened read-only: no signing key")
        return self._signer.verifier_key()

    # -- appending ----------------------------------------------------------------------------

    def append(self, entries: Sequence[LedgerEntry]) -> int:
        """Commit `entries` in one transaction after every leaf already stored; returns the new
        tree size."""
        self.append_batch(entries)
        return self.size

    def append_batch(
        self, entries: Sequence[LedgerEntry], *, skip_recorded: bool = False
    ) -> tuple[int, int]:
        """Commit `entries`; returns (first sequence number, number of records written; -1 when
        they are not contiguous, so a process told of them reloads the tree).
        `skip_recorded` leaves out entries whose decision id is already stored: a batch sent
        again after its first commit went unacknowledged."""
        if not entries:
            return self.size, 0
        try:
            return self._append_once(entries, skip_recorded)
        except Exception as exc:
            if not refused_by_store(exc):
                raise
            log.warning(
                "the store refused a batch of %d ledger records (%s); isolating the record",
                len(entries),
                _reason(exc),
            )
        return self._append_isolating(entries, skip_recorded)

    def _append_isolating(
        self, entries: Sequence[LedgerEntry], skip_recorded: bool
    ) -> tuple[int, int]:
        """Halve the batch until the refused records stand alone, committing every other part
        in order; each refused record is quarantined in its turn (O(k log n) transactions)."""
        try:
            return self._append_once(entries, skip_recorded)
        except Exception as exc:
            if not refused_by_store(exc):
                raise
            if len(entries) == 1:
                return self._quarantine(entries[0], exc, skip_recorded)
        middle = len(entries) // 2
        start, first = self._append_isolating(entries[:middle], skip_recorded)
        second_start, second = self._append_isolating(entries[middle:], skip_recorded)
        contiguous = first >= 0 and second >= 0 and second_start == start + first
        return start, first + second if contiguous else -1

    def _append_once(self, entries: Sequence[LedgerEntry], skip_recorded: bool) -> tuple[int, int]:
        with self._append_lock:
            with self._engine.begin() as connection:
                start, appends = self._locked(connection)
                if skip_recorded:
                    entries = self._not_recorded(connection, entries)
                self._insert(connection, entries, start)
            # Leaves join the in-memory tree only once the commit above has succeeded, and
            # under the lock, so a concurrent `checkpoint()` catching up cannot load them twice.
            for entry in entries:
                self._tree.append(entry.leaf_hash)
            self._appends = appends
        return start, len(entries)

    def _locked(self, connection: Connection) -> tuple[int, int]:
        """Take the ledger lock and load what others appended; returns the next sequence
        number and the lock's append count, which `_committed_appends` keeps once the
        transaction commits."""
        locked = connection.exec_driver_sql(_TAKE_LOCK).rowcount
        if locked != 1:
            raise LedgerError("the ledger_lock row is missing: run `trustplane init`")
        appends = int(connection.exec_driver_sql(_APPENDS).scalar_one())
        # Every append increments the count under the lock: one more than after our own last
        # commit means nobody else appended since, and the tree is already the store's (the
        # query for others' leaves costs a flush more than its inserts).
        if self._appends is None or appends != self._appends + 1:
            self._catch_up(connection)  # leaves other appenders committed since our last append
        return self._tree.size, appends

    def _quarantine(
        self, entry: LedgerEntry, exc: BaseException, skip_recorded: bool
    ) -> tuple[int, int]:
        """Keep a record the store refused as a row: its leaf takes the next place in the tree,
        its canonical bytes and the reason go to `ledger_quarantine`."""
        reason = _reason(exc)
        with self._append_lock:
            self._appends = None  # rare: the next append reads others' leaves whatever the count
            with self._engine.begin() as connection:
                seq, _ = self._locked(connection)
                if skip_recorded and not self._not_recorded(connection, [entry]):
                    return seq, 0
                connection.execute(
                    insert(ledger_quarantine).values(
                        seq=seq,
                        decision_id=column_text(entry.decision_id, 64),
                        record=entry.record,
                        leaf_hash=entry.leaf_hash,
                        reason=column_text(reason, 2000),
                        created_at=time.time(),
                    )
                )
            self._tree.append(entry.leaf_hash)  # under the lock, as in _append_once
        self.quarantined += 1
        log.error(
            "ledger record %s (seq %d) quarantined: the store refused it as a row: %s",
            column_text(entry.decision_id, 64),
            seq,
            reason,
        )
        return seq, 1

    def mark_undelivered(self, decision_ids: Sequence[str]) -> None:
        """These decisions were committed after their callers had been answered 503 (sync
        durability): say so in `decisions.undelivered`, so no one takes them for answers a
        client received."""
        with self._engine.begin() as connection:
            for offset in range(0, len(decision_ids), _ROWS_PER_STATEMENT):
                connection.execute(
                    update(decisions)
                    .where(
                        decisions.c.decision_id.in_(
                            decision_ids[offset : offset + _ROWS_PER_STATEMENT]
                        )
                    )
                    .values(undelivered=True)
                )

    def note_committed(self, entries: Sequence[LedgerEntry], start: int, count: int) -> None:
        """Another process (the appender) committed `entries` at `start`: extend the in-memory
        tree, from the store if anything else was appended or skipped meanwhile."""
        with self._append_lock:
            if start == self._tree.size and count == len(entries):
                for entry in entries:
                    self._tree.append(entry.leaf_hash)
            else:
                self._catch_up()

    def _not_recorded(
        self, connection: Connection, entries: Sequence[LedgerEntry]
    ) -> list[LedgerEntry]:
        ids = [e.decision_id for e in entries]
        stored: set[str] = set()
        for offset in range(0, len(ids), _ROWS_PER_STATEMENT):
            chunk = ids[offset : offset + _ROWS_PER_STATEMENT]
            for table in (decisions, ledger_quarantine):
                stored.update(
                    row[0]
                    for row in connection.execute(
                        select(table.c.decision_id).where(table.c.decision_id.in_(chunk))
                    )
                )
        return [e for e in entries if e.decision_id not in stored]

    def _insert(self, connection: Connection, entries: Sequence[LedgerEntry], start: int) -> None:
        """Multi-row INSERTs through the driver: one statement per chunk instead of one step
        per row. Besides saving per-row overhead, the sqlite3 module drops and retakes the GIL
        on every step, and while request threads hold it each retake waits for the interpreter's
        switch interval; a few statements per flush keep the writer from stalling."""
        marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        columns = ", ".join(_COLUMNS)
        for offset in range(0, len(entries), _ROWS_PER_STATEMENT):
            chunk = entries[offset : offset + _ROWS_PER_STATEMENT]
            row = "(" + ", ".join([marker] * len(_COLUMNS)) + ")"
            sql = f"INSERT INTO decisions ({columns}) VALUES " + ", ".join([row] * len(chunk))
            params: list[Any] = []
            for i, entry in enumerate(chunk):
                params.extend(entry.values(start + offset + i))
            connection.exec_driver_sql(sql, tuple(params))
        found = _evidence_rows(entries, start)
        if found:
            connection.execute(insert(rollout_evidence), found)

    def _catch_up(self, connection: Connection | None = None) -> None:
        """Load leaf hashes the store has beyond our tree."""
        if connection is None:
            with self._engine.connect() as own:
                self._catch_up(own)
            return
        while True:
            start = self._tree.size
            leaves = union_all(
                select(decisions.c.seq, decisions.c.leaf_hash).where(decisions.c.seq >= start),
                select(ledger_quarantine.c.seq, ledger_quarantine.c.leaf_hash).where(
                    ledger_quarantine.c.seq >= start
                ),
            ).subquery()
            rows = connection.execute(
                select(leaves.c.seq, leaves.c.leaf_hash).order_by(leaves.c.seq).limit(_LOAD_CHUNK)
            ).all()
            if not rows:
                return
            for seq, stored_hash in rows:
                if seq != self._tree.size:
                    raise LedgerError(f"ledger store has a gap: expected seq {self._tree.size}")
                self._tree.append(bytes(stored_hash))

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, force: bool = False) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of every record in the store (this process's and any
        other appender's) if the tree grew since the last one signed here."""
        with self._append_lock:
            self._catch_up()  # leaves another worker, replica or process committed
            size = self._tree.size
        if size == self._last_checkpoint_size and not force:
            return None
        root = self._tree.root(size)
        if self._signer is None:
            raise LedgerError("ledger opened read-only: no signing key")
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self._signer)
        stored = StoredCheckpoint(size, root, note, time.time())
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(checkpoints).values(
                        size=size, root_hash=root, note=note, created_at=stored.created_at
                    )
                )
        except IntegrityError:
            pass  # a checkpoint of this size exists already (another replica signed it)
        self._last_checkpoint_size = size
        return stored

    def _max_checkpoint_size(self) -> int:
        with self._engine.connect() as connection:
            value = connection.execute(select(func.max(checkpoints.c.size))).scalar()
        return int(value) if value is not None else -1

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(checkpoints).order_by(checkpoints.c.size.desc()).limit(1)
            ).first()
        return _stored(row) if row else None

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(checkpoints).where(checkpoints.c.size == size)).first()
        return _stored(row) if row else None

    def list_checkpoints(self, limit: int = 100) -> list[StoredCheckpoint]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(checkpoints).order_by(checkpoints.c.size.desc()).limit(limit)
            ).all()
        return [_stored(r) for r in rows]

    # -- proofs -------------------------------------------------------------------------------

    def inclusion_proof(self, decision_id: str, tree_size: int | None = None) -> dict[str, Any]:
        with self._engine.connect() as connection:
            row = None
            for table in (decisions, ledger_quarantine):  # a quarantined leaf is in the tree
                row = connection.execute(
                    select(table.c.seq, table.c.leaf_hash).where(table.c.decision_id == decision_id)
                ).first()
                if row is not None:
                    break
        if row is None:
            raise LedgerError(f"decision {decision_id} is not in the ledger (yet)")
        seq, stored_hash = int(row[0]), bytes(row[1])
        size = self._proof_size(tree_size)
        if seq >= size:
            raise LedgerError(
                f"decision {decision_id} is leaf {seq}, not inside a tree of size {size}; "
                "ask again after the next checkpoint"
            )
        try:
            proof = self._tree.inclusion_proof(seq, size)
        except ProofError as exc:
            raise LedgerError(str(exc)) from None
        return {
            "decision_id": decision_id,
            "leaf_index": seq,
            "tree_size": size,
            "leaf_hash": _b64(stored_hash),
            "root_hash": _b64(self._tree.root(size)),
            "inclusion_path": [_b64(h) for h in proof],
            "checkpoint": self._note_for(size),
        }

    def consistency_proof(self, first: int, second: int | None = None) -> dict[str, Any]:
        second = self._proof_size(second)
        if not 0 <= first <= second:
            raise LedgerError(f"first ({first}) must be between 0 and second ({second})")
        try:
            proof = self._tree.consistency_proof(first, second)
        except ProofError as exc:
            raise LedgerError(str(exc)) from None
        return {
            "first": first,
            "second": second,
            "first_root": _b64(self._tree.root(first)),
            "second_root": _b64(self._tree.root(second)),
            "consistency_path": [_b64(h) for h in proof],
            "first_checkpoint": self._note_for(first),
            "second_checkpoint": self._note_for(second),
        }

    def _proof_size(self, requested: int | None) -> int:
        if requested is None:
            latest = self.latest_checkpoint()
            return latest.size if latest else self._tree.size
        if not 0 <= requested <= self._tree.size:
            raise LedgerError(f"tree_size {requested} is outside 0..{self._tree.size}")
        return requested

    def _note_for(self, size: int) -> str | None:
        stored = self.checkpoint_at(size)
        return stored.note if stored else None


def _reason(exc: BaseException) -> str:
    """One line: the driver's own message when there is one (SQL and parameters left out)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}"[:1000]


def _stored(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(int(row.size), bytes(row.root_hash), row.note, float(row.created_at))


# -- verification ----------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What `audit verify` found. `problems` are signs of tampering; records after the newest
    checkpoint that matched (`unanchored`) are hash- and column-checked but not yet proven: a
    signed checkpoint would show their removal, nothing shows it before one is signed."""

    records: int = 0
    checkpoints: int = 0
    problems: list[str] | None = None
    unanchored: int = 0  # records after the newest checkpoint that verified: not yet proven
    quarantined: int = 0  # of `records`: leaves whose row the store refused (ledger_quarantine)
    proven: int = 0  # records covered by that checkpoint
    newest_checkpoint: StoredCheckpoint | None = None
    column_mismatches: list[dict[str, Any]] | None = None
    not_listed: int = 0  # problems beyond `max_problems`, counted only
    require_checkpointed: bool = False

    @property
    def intact(self) -> bool:
        """Nothing altered, inserted or removed as far as the records and checkpoints show."""
        return not self.problems and not self.not_listed

    @property
    def ok(self) -> bool:
        return self.intact and not (self.require_checkpointed and self.unanchored)

    @property
    def unproven_range(self) -> tuple[int, int] | None:
        """First and last sequence number not yet under a checkpoint, if any."""
        return (self.proven, self.records - 1) if self.unanchored else None

    def unproven_line(self) -> str:
        """One line on the records no checkpoint covers yet (empty when there are none)."""
        if not self.unanchored:
            return ""
        first, last = self.unproven_range or (0, 0)
        newest = self.newest_checkpoint
        if not self.proven:
            where = "no checkpoint covers any record yet"
        elif newest is not None and newest.size == self.proven:
            signed = rfc3339(newest.created_at)
            where = f"they come after the newest checkpoint (size {newest.size}, signed {signed})"
        else:
            where = f"they come after the newest checkpoint that verified (size {self.proven})"
        return (
            f"{self.unanchored} records not yet proven: seq {first}..{last}; {where}; "
            "removing them would go unnoticed until a checkpoint covers them"
        )

    def as_dict(self) -> dict[str, Any]:
        span = self.unproven_range
        return {
            "ok": self.ok,
            "intact": self.intact,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "newest_checkpoint": (
                None if self.newest_checkpoint is None else self.newest_checkpoint.as_dict()
            ),
            "proven_records": self.proven,
            "records_after_last_checkpoint": self.unanchored,
            "quarantined": self.quarantined,
            "not_yet_proven": {
                "records": self.unanchored,
                "first_seq": span[0] if span else None,
                "last_seq": span[1] if span else None,
            },
            "require_checkpointed": self.require_checkpointed,
            "problems": self.problems or [],
            "problems_not_listed": self.not_listed,
            "column_mismatches": self.column_mismatches or [],
        }


class LedgerSource(Protocol):
    """Where `verify_ledger` reads a ledger from: the store itself (`StoreSource`) or a
    server's admin API (`ApiSource`). Whatever the source, the same function checks it."""

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, smallest first."""
        ...

    def quarantined_count(self) -> int: ...

    def records_expected(self) -> int:
        """How many rows `rows` will yield (for a progress bar)."""
        ...

    def rows(self) -> Iterator[Sequence[Any]]:
        """Every `decisions` row in ledger order, as `_VERIFY_COLUMNS`."""
        ...

    def quarantined(self) -> Iterator[Sequence[Any]]:
        """Every quarantined leaf's (seq, decision id, record, leaf hash), in ledger order."""
        ...


class StoreSource:
    """The ledger as the store holds it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def checkpoints(self) -> list[StoredCheckpoint]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(checkpoints).order_by(checkpoints.c.size)).all()
        return [_stored(r) for r in rows]

    def quarantined_count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(ledger_quarantine)).scalar_one()
            )

    def records_expected(self) -> int:
        """How many rows `rows` will yield, for a progress bar."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(decisions)).scalar_one())

    def rows(self) -> Iterator[Sequence[Any]]:
        return _stream_rows(self.engine)

    def evidence(self) -> dict[tuple[str, int], tuple[str, str, str]]:
        """Every `rollout_evidence` row: (policy, seq) → (decision id, principal, cohort)."""
        ev = rollout_evidence.c
        query = select(ev.policy_id, ev.seq, ev.decision_id, ev.principal, ev.cohort)
        with self.engine.connect() as connection:
            return {
                (row[0], int(row[1])): (row[2], row[3], row[4]) for row in connection.execute(query)
            }

    def quarantined(self) -> Iterator[Sequence[Any]]:
        return _stream_quarantined(self.engine)


Fetch = Callable[[str, dict[str, str]], Any]
"""`fetch(path, query parameters)`: the JSON answer of one admin API call (raising on errors)."""


class ApiSource:
    """A server's ledger, read page by page through the admin API (`/v1/ledger/checkpoints`,
    `/v1/ledger/quarantine`, `/v1/ledger/records`) and checked here by `verify_ledger`: what
    the server's store holds, verified without trusting the server to have verified it.

    The records verified are those the store held when the first record page was asked for:
    each page read is itself recorded in the ledger, after that bound."""

    def __init__(self, fetch: Fetch, page: int = 5000) -> None:
        self._fetch = fetch
        self._page = page
        self._size: int | None = None
        self._quarantined: list[tuple[int, str, bytes, bytes]] | None = None
        self._checkpoints: list[StoredCheckpoint] | None = None
        self.verifier_keys: list[str] = []  # what the server says it verifies with

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Read once: the first call also learns the server's verifier keys."""
        if self._checkpoints is None:
            self._checkpoints = self._read_checkpoints()
        return self._checkpoints

    def _read_checkpoints(self) -> list[StoredCheckpoint]:
        found: list[StoredCheckpoint] = []
        start: int | None = 0
        while start is not None:
            doc = self._fetch(
                "/v1/ledger/checkpoints", {"from_size": str(start), "limit": str(self._page)}
            )
            published = doc.get("verifier_keys") or [doc.get("verifier_key")]
            self.verifier_keys = [str(k) for k in published if k]
            found.extend(_checkpoint_from(item) for item in doc["checkpoints"])
            start = doc.get("next_from_size")
        return found

    def records_expected(self) -> int:
        """The ledger's size when verification began (fixed by the first call)."""
        if self._size is None:
            self._load_quarantined()
        assert self._size is not None
        return self._size - len(self._quarantined or [])

    def quarantined_count(self) -> int:
        return len(self._load_quarantined())

    def quarantined(self) -> Iterator[Sequence[Any]]:
        return iter(self._load_quarantined())

    def rows(self) -> Iterator[Sequence[Any]]:
        self._load_quarantined()
        start: int | None = 0
        while start is not None:
            doc = self._fetch("/v1/ledger/records", self._bounded(start))
            for item in doc["records"]:
                yield page_row(item)
            start = doc.get("next_from_seq")

    def _bounded(self, start: int) -> dict[str, str]:
        params = {"from_seq": str(start), "limit": str(self._page)}
        if self._size is not None:
            params["to_seq"] = str(self._size)
        return params

    def _load_quarantined(self) -> list[tuple[int, str, bytes, bytes]]:
        if self._quarantined is None:
            held: list[tuple[int, str, bytes, bytes]] = []
            start: int | None = 0
            while start is not None:
                doc = self._fetch("/v1/ledger/quarantine", self._bounded(start))
                if self._size is None:
                    self._size = int(doc["tree_size"])
                held.extend(
                    (
                        int(item["seq"]),
                        str(item["decision_id"]),
                        base64.b64decode(item["record"]),
                        base64.b64decode(item["leaf_hash"]),
                    )
                    for item in doc["records"]
                    if int(item["seq"]) < self._size
                )
                start = doc.get("next_from_seq")
            self._quarantined = held
        return self._quarantined


def _checkpoint_from(item: dict[str, Any]) -> StoredCheckpoint:
    created = item["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created).timestamp()
    return StoredCheckpoint(
        int(item["tree_size"]),
        base64.b64decode(item["root_hash"]),
        str(item["checkpoint"]),
        float(created),
    )


def page_item(row: Sequence[Any]) -> dict[str, Any]:
    """A `decisions` row (`_VERIFY_COLUMNS`) as the admin API sends it: the stored query
    columns as they are (verification checks them), the record and leaf hash in base64."""
    item = dict(zip(_VERIFY_COLUMNS, row, strict=True))
    item["record"] = _b64(bytes(row[_RECORD]))
    item["leaf_hash"] = _b64(bytes(row[_LEAF_HASH]))
    return item


def page_row(item: dict[str, Any]) -> tuple[Any, ...]:
    """`page_item` read back: the row as the store held it."""
    values = [item[name] for name in _VERIFY_COLUMNS]
    values[_RECORD] = base64.b64decode(values[_RECORD])
    values[_LEAF_HASH] = base64.b64decode(values[_LEAF_HASH])
    return tuple(values)


def tree_size(engine: Engine) -> int:
    """Leaves in the store (rows and quarantined records): one past the largest seq."""
    with engine.connect() as connection:
        largest = [
            int(value)
            for table in (decisions, ledger_quarantine)
            if (value := connection.execute(select(func.max(table.c.seq))).scalar()) is not None
        ]
    return max(largest) + 1 if largest else 0


def record_page(
    engine: Engine, from_seq: int, to_seq: int | None, limit: int
) -> list[dict[str, Any]]:
    """`decisions` rows with from_seq <= seq < to_seq, in ledger order, as `page_item`s."""
    c = decisions.c
    statement = select(*(c[name] for name in _VERIFY_COLUMNS)).where(c.seq >= from_seq)
    if to_seq is not None:
        statement = statement.where(c.seq < to_seq)
    with engine.connect() as connection:
        rows = connection.execute(statement.order_by(c.seq).limit(limit)).all()
    return [page_item(row) for row in rows]


def quarantine_page(
    engine: Engine, from_seq: int, to_seq: int | None, limit: int
) -> list[dict[str, Any]]:
    """Quarantined leaves with from_seq <= seq < to_seq, in ledger order, with the reason the
    store refused each as a row."""
    q = ledger_quarantine.c
    statement = select(q.seq, q.decision_id, q.record, q.leaf_hash, q.reason).where(
        q.seq >= from_seq
    )
    if to_seq is not None:
        statement = statement.where(q.seq < to_seq)
    with engine.connect() as connection:
        rows = connection.execute(statement.order_by(q.seq).limit(limit)).all()
    return [
        {
            "seq": int(seq),
            "decision_id": decision_id,
            "record": _b64(bytes(record)),
            "leaf_hash": _b64(bytes(stored_hash)),
            "reason": reason,
        }
        for seq, decision_id, record, stored_hash, reason in rows
    ]


def checkpoint_page(engine: Engine, from_size: int, limit: int) -> list[StoredCheckpoint]:
    """Checkpoints of size >= from_size, smallest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(checkpoints)
            .where(checkpoints.c.size >= from_size)
            .order_by(checkpoints.c.size)
            .limit(limit)
        ).all()
    return [_stored(r) for r in rows]


def verify_ledger(
    source: Engine | LedgerSource,
    verifier: NoteVerifier | Sequence[NoteVerifier],
    *,
    progress: Callable[[int], None] | None = None,
    max_problems: int = 100,
    require_checkpointed: bool = False,
) -> VerifyReport:
    """Recompute every leaf and the tree from the store, check every signed checkpoint, and
    check every row's query columns against the record they were derived from.

    Names each record whose content no longer matches its leaf hash, each query column that no
    longer matches its record (by sequence number and column), every gap, and every checkpoint
    whose signature or root does not match the recomputed tree. Reads each row once, streamed.
    `require_checkpointed` makes records that no checkpoint covers yet a failure (`ok`).
    `source`: the store (an engine) or any `LedgerSource`, such as a server's admin API."""
    if isinstance(source, Engine):
        source = StoreSource(source)
    report = VerifyReport(problems=[], column_mismatches=[])
    report.require_checkpointed = require_checkpointed
    problems = report.problems
    mismatches = report.column_mismatches
    assert problems is not None and mismatches is not None
    stored_checkpoints = source.checkpoints()
    report.quarantined = source.quarantined_count()
    report.checkpoints = len(stored_checkpoints)
    report.newest_checkpoint = stored_checkpoints[-1] if stored_checkpoints else None
    pending = iter(stored_checkpoints)
    next_checkpoint = next(pending, None)
    frontier = Frontier()
    last_good = 0

    def problem(text: str) -> None:
        if len(problems) < max_problems:
            problems.append(text)
        else:
            report.not_listed += 1

    # Signatures first, independently of the records, so a forged checkpoint is named even
    # when records are missing.
    signed: dict[int, Checkpoint] = {}
    for cp in stored_checkpoints:
        try:
            opened = open_checkpoint(cp.note, verifier)
        except CheckpointError as exc:
            problems.append(f"checkpoint at size {cp.size}: signature invalid: {exc}")
            continue
        if opened.size != cp.size or opened.root_hash != cp.root_hash:
            problems.append(f"checkpoint at size {cp.size}: stored columns differ from its note")
            continue
        signed[cp.size] = opened

    def check_checkpoint(cp: StoredCheckpoint, root: bytes) -> None:
        nonlocal last_good
        opened = signed.get(cp.size)
        if opened is None:
            return  # already reported
        if opened.root_hash != root:
            problems.append(
                f"checkpoint at size {cp.size}: root does not match the records; a record in "
                f"seq {last_good}..{cp.size - 1} was altered, inserted or removed"
            )
        else:
            last_good = cp.size

    while next_checkpoint is not None and next_checkpoint.size == 0:
        check_checkpoint(next_checkpoint, frontier.root())
        next_checkpoint = next(pending, None)

    def column_problems(row: Sequence[Any], record: bytes) -> None:
        seq, decision_id = row[0], row[1]
        found = _column_mismatches(row, record)
        for column, _value, expected in found:
            if column == "decision_id":
                decision_id = expected  # name the record by the id it was signed with
        for column, stored, expected in found:
            if len(mismatches) < max_problems:
                mismatches.append(
                    {
                        "seq": seq,
                        "decision_id": decision_id,
                        "column": column,
                        "stored": stored,
                        "record": expected,
                    }
                )
            problem(
                f"record seq {seq} (decision {decision_id}): query column {column} holds "
                f"{_shown(stored)} but its signed record says {_shown(expected)}"
            )

    def add_leaf(recomputed: bytes) -> None:
        nonlocal next_checkpoint
        frontier.append(recomputed)
        report.records += 1
        while next_checkpoint is not None and next_checkpoint.size == frontier.size:
            check_checkpoint(next_checkpoint, frontier.root())
            next_checkpoint = next(pending, None)

    # Quarantined leaves (records the store refused as rows: ledger_quarantine) hold their
    # place in the tree but have no query columns; they are few, and merged in where the rows
    # skip their sequence numbers, so the common path pays nothing for them.
    quarantine = iter(source.quarantined())
    held = next(quarantine, None)

    def take_quarantined() -> None:
        nonlocal held
        while held is not None and held[0] == frontier.size:
            seq, decision_id, record, stored_hash = held
            recomputed = leaf_hash(bytes(record))
            if recomputed != bytes(stored_hash):
                problem(
                    f"quarantined record seq {seq} (decision {decision_id}) was altered: its "
                    "content no longer matches its leaf hash"
                )
            add_leaf(recomputed)
            held = next(quarantine, None)

    # The rollout evidence rows a store holds (not an API source): derived from the records as
    # they pass, compared once the loop is done.
    stored_evidence = getattr(source, "evidence", None)
    expected_evidence: dict[tuple[str, int], tuple[str, str, str]] | None = (
        {} if stored_evidence is not None else None
    )
    # The loop runs once per record; the column check's common case (everything matches) is
    # inlined and costs one parse, one derivation and two comparisons (docs/benchmarks.md §4).
    loads = orjson.loads
    for row in source.rows():
        seq, record, stored_hash = row[0], bytes(row[_RECORD]), bytes(row[_LEAF_HASH])
        if seq != frontier.size:
            take_quarantined()
            if seq != frontier.size:
                problems.append(f"records missing: expected seq {frontier.size}, found {seq}")
                break
        recomputed = leaf_hash(record)
        if recomputed != stored_hash:
            problem(
                f"record seq {seq} (decision {row[1]}) was altered: its content no "
                "longer matches its leaf hash"
            )
        else:  # an altered record's columns are moot: the record itself is named above
            document = None
            try:
                document = loads(record)
                matches = (
                    query_columns(document) == row[1:_TS] and rfc3339(row[_TS]) == document["time"]
                )
            except Exception:  # anything unexpected is sorted out, and named, just below
                matches = False
            if not matches:
                column_problems(row, record)
            if expected_evidence is not None and (row[6] != row[7] or b'"canary":' in record):
                try:
                    derived = evidence(document) if isinstance(document, dict) else []
                except (TypeError, AttributeError):
                    derived = []
                for policy_id, cohort in derived:
                    expected_evidence[(column_text(policy_id, 400), seq)] = (
                        column_text(str(document["decision_id"]), 36),  # type: ignore[index]
                        row[3],
                        cohort,
                    )
        add_leaf(recomputed)
        if progress is not None and report.records % 10_000 == 0:
            progress(report.records)
    else:
        take_quarantined()  # quarantined leaves after the last row
    if held is not None and not any(p.startswith("records missing") for p in problems):
        problems.append(
            f"records missing: expected seq {frontier.size}, found quarantined seq {held[0]}"
        )
    close = getattr(quarantine, "close", None)
    if close is not None:
        close()
    if stored_evidence is not None and expected_evidence is not None:
        _check_evidence(stored_evidence(), expected_evidence, problem)
    if next_checkpoint is not None:
        problems.append(
            f"checkpoint at size {next_checkpoint.size} covers records that are missing "
            f"(only {frontier.size} found)"
        )
    report.proven = min(last_good, report.records)
    report.unanchored = report.records - report.proven
    if progress is not None:
        progress(report.records)
    return report


def _check_evidence(
    stored: dict[tuple[str, int], tuple[str, str, str]],
    expected: dict[tuple[str, int], tuple[str, str, str]],
    problem: Callable[[str], None],
) -> None:
    """Name every `rollout_evidence` row that no record derives, or derives otherwise, and
    every one a record derives that is missing (the gates count these rows)."""
    for key in sorted(set(stored) | set(expected), key=lambda k: (k[1], k[0])):
        policy_id, seq = key
        have, want = stored.get(key), expected.get(key)
        if have == want:
            continue
        if want is None:
            problem(
                f"rollout evidence row for policy {policy_id} at seq {seq} is derived from no "
                "record: it was added"
            )
        elif have is None:
            problem(
                f"rollout evidence row for policy {policy_id} at seq {seq} (decision {want[0]}) "
                "is missing: its record is a would-deny or canary denial of it"
            )
        else:
            problem(
                f"rollout evidence row for policy {policy_id} at seq {seq} holds {have} but its "
                f"signed record says {want}"
            )


# The columns `_stream_rows` reads, in order: seq, then the query columns, then ts, the record
# and its leaf hash.
_VERIFY_COLUMNS = ("seq", *QUERY_COLUMNS, "ts", "record", "leaf_hash")
_TS = 1 + len(QUERY_COLUMNS)
_RECORD, _LEAF_HASH = _TS + 1, _TS + 2


def _column_mismatches(row: Sequence[Any], record: bytes) -> list[tuple[str, Any, Any]]:
    """(column, stored value, value derived from the record) for each query column of `row`
    that its record does not support."""
    try:
        document = orjson.loads(record)
        expected = query_columns(document)
    except (orjson.JSONDecodeError, RecordError) as exc:
        return [("record", "(unreadable)", f"a ledger record ({exc})")]
    stored = tuple(row[1:_TS])
    found = (
        []
        if stored == expected  # the common case, compared in one step
        else [
            (column, value, want)
            for column, value, want in zip(QUERY_COLUMNS, stored, expected, strict=True)
            if value != want
        ]
    )
    ts, time_text = row[_TS], document.get("time")
    if type(ts) is not float or rfc3339(ts) != time_text:
        found.append(("ts", ts, time_text))
    return found


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _stream_rows(engine: Engine) -> Iterator[Any]:
    """Every row verify needs, in ledger order, in batches of 10,000 (one read of each row)."""
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=10_000).execute(
            select(*(decisions.c[name] for name in _VERIFY_COLUMNS)).order_by(decisions.c.seq)
        )
        yield from result


def _stream_quarantined(engine: Engine) -> Generator[Any, None, None]:
    """Quarantined leaves' (seq, decision id, record, leaf hash), in ledger order."""
    q = ledger_quarantine.c
    with engine.connect() as connection:
        yield from connection.execute(
            select(q.seq, q.decision_id, q.record, q.leaf_hash).order_by(q.seq)
        )


def _stream_records(engine: Engine) -> Iterator[Any]:
    """Every leaf's (seq, decision id, record, leaf hash) in order, quarantined ones included."""
    q = ledger_quarantine.c
    leaves = union_all(
        select(decisions.c.seq, decisions.c.decision_id, decisions.c.record, decisions.c.leaf_hash),
        select(q.seq, q.decision_id, q.record, q.leaf_hash),
    ).subquery()
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=10_000).execute(
            select(leaves).order_by(leaves.c.seq)
        )
        yield from result


# -- queries ---------------------------------------------------------------------------------


def query_decisions(engine: Engine, query: DecisionQuery) -> list[dict[str, Any]]:
    """Recent records matching every given filter, newest first unless `ascending`; each as
    `record_view` shows it."""
    c = decisions.c
    statement = select(c.seq, c.record)
    if isinstance(query.principal, str):
        statement = statement.where(c.principal == column_text(query.principal, 400))
    elif query.principal is not None:
        statement = statement.where(_entity_match(c.principal, query.principal))
    if query.action is not None:
        statement = statement.where(_entity_match(c.action, query.action))
    if query.resource is not None:
        statement = statement.where(_entity_match(c.resource, query.resource))
    if query.kind:
        statement = statement.where(c.kind == query.kind)
    if query.decision:
        statement = statement.where(c.decision == query.decision)
    if query.policy:
        statement = statement.where(
            c.policies.contains(f" {column_text(query.policy)} ", autoescape=True)
        )
    if query.shadow_mismatch is True:
        statement = statement.where(c.decision != c.shadow)
    elif query.shadow_mismatch is False:
        statement = statement.where(c.decision == c.shadow)
    if query.since is not None:
        statement = statement.where(c.ts >= query.since)
    if query.until is not None:
        statement = statement.where(c.ts < query.until)
    if query.after_seq is not None:
        statement = statement.where(c.seq > query.after_seq)
    if query.limit <= 0:
        return []
    order = c.seq.asc() if query.ascending else c.seq.desc()
    statement = statement.order_by(order).limit(min(query.limit, 10_000))
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    return [record_view(int(seq), orjson.loads(record)) for seq, record in rows]


def _entity_match(column: Any, wanted: EntityFilter) -> Any:
    """The column holds one of `wanted.exact`, or `Type::"id"` for its `any_type` id."""
    condition = column.in_([column_text(v, 400) for v in wanted.exact])
    if wanted.any_type is not None:
        suffix = column_text(f'::"{wanted.any_type}"', 400)
        condition = or_(condition, column.endswith(suffix, autoescape=True))
    return condition


def record_view(seq: int, record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as queries answer it: its sequence number, the signed record, and what
    `query.reason_code` and `query.determining_policies` read from it."""
    return {
        "seq": seq,
        **record,
        "reason_code": reason_code(record),
        "determining_policies": determining_policies(record),
    }


def get_decision(engine: Engine, decision_id: str) -> dict[str, Any] | None:
    """The record of `decision_id`; a quarantined one says so (`quarantined`: the reason)."""
    with engine.connect() as connection:
        row = connection.execute(
            select(decisions.c.seq, decisions.c.record).where(
                decisions.c.decision_id == decision_id
            )
        ).first()
        if row is None:
            q = ledger_quarantine.c
            held = connection.execute(
                select(q.seq, q.record, q.reason).where(q.decision_id == decision_id)
            ).first()
            if held is not None:
                return {**record_view(int(held[0]), orjson.loads(held[1])), "quarantined": held[2]}
    return None if row is None else record_view(int(row[0]), orjson.loads(row[1]))


def iter_records(engine: Engine) -> Iterator[bytes]:
    """Every record's canonical bytes in ledger order (for export)."""
    for _seq, _decision_id, record, _hash in _stream_records(engine):
        yield bytes(record)
