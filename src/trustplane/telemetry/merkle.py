"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and verification.

The decision ledger commits to its entries with the same tree as Certificate Transparency so
that any RFC 6962/9162 tooling (and the C2SP tlog-checkpoint ecosystem) can audit it:

* leaf hash  = SHA-256(0x00 || data)
* node hash  = SHA-256(0x01 || left || right)
* empty root = SHA-256("")

The two prefixes give domain separation, so a leaf can never be passed off as an interior node
(second-preimage protection). Everything here is pure and deterministic; only :mod:`hashlib`
is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "LeafHashes",
    "MerkleTree",
    "ProofError",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Hash one entry as a leaf; the 0x00 prefix keeps leaves distinct from interior nodes."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children into their parent; the 0x01 prefix keeps nodes distinct from leaves."""
    return _sha256(_NODE_PREFIX + left + right).digest()


EMPTY_ROOT: bytes = _sha256(b"").digest()
"""MTH({}) -- the root of a tree with no leaves, as RFC 9162 section 2.1.1 defines it."""


class ProofError(ValueError):
    """An index or tree size outside what the tree holds was asked for."""


def _check_hash(h: bytes, what: str) -> bytes:
    if not isinstance(h, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(h).__name__}")
    b = bytes(h)
    if len(b) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(b)}")
    return b


def _split(n: int) -> int:
    """Largest power of two strictly less than ``n`` (``n >= 2``): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


class LeafHashes:
    """Append-only, compact store of 32-byte leaf hashes (one bytearray), indexable.

    A list of ``bytes`` objects costs ~65 bytes of overhead per leaf; one flat bytearray keeps a
    million-leaf ledger at 32 MB and lets subtree hashing slice runs of leaves cheaply.
    Append-only on purpose: the tree caches subtree hashes on the assumption leaves never change.
    """

    __slots__ = ("_buf",)

    def __init__(self, hashes: Iterable[bytes] = ()) -> None:
        self._buf = bytearray()
        self.extend(hashes)

    def append(self, h: bytes) -> None:
        """Add one leaf hash; rejects anything that is not exactly 32 bytes."""
        if type(h) is not bytes or len(h) != HASH_SIZE:
            h = _check_hash(h, "leaf hash")
        self._buf += h

    def extend(self, hashes: Iterable[bytes]) -> None:
        """Add many leaf hashes, all-or-nothing: a bad one leaves the store unchanged."""
        chunk = bytearray()
        for h in hashes:
            if type(h) is not bytes or len(h) != HASH_SIZE:
                h = _check_hash(h, "leaf hash")
            chunk += h
        self._buf += chunk

    def __len__(self) -> int:
        return len(self._buf) // HASH_SIZE

    def __getitem__(self, i: int) -> bytes:
        n = len(self)
        if not isinstance(i, int):
            raise TypeError(f"leaf index must be an int, not {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"leaf index {i} out of range for {n} leaves")
        off = i * HASH_SIZE
        return bytes(self._buf[off : off + HASH_SIZE])

    def __iter__(self) -> Iterator[bytes]:
        buf = bytes(self._buf)
        for off in range(0, len(buf), HASH_SIZE):
            yield buf[off : off + HASH_SIZE]

    def slice(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes ``start..end-1`` as a list (one copy of the run, not one per index)."""
        n = len(self)
        if not 0 <= start <= end <= n:
            raise IndexError(f"leaf range [{start}, {end}) out of range for {n} leaves")
        raw = bytes(self._buf[start * HASH_SIZE : end * HASH_SIZE])
        return [raw[o : o + HASH_SIZE] for o in range(0, len(raw), HASH_SIZE)]


class Frontier:
    """Streaming root computation in O(log n) memory (the 'compact range' of complete subtrees).

    Holds the roots of the maximal complete subtrees covering the leaves so far -- one per set
    bit of the size, largest first -- which is all that is needed to extend the tree or to
    compute its root. Lets a writer keep the current root without keeping the leaves.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf hash, merging subtrees that it completes (amortised O(1) hashes)."""
        h = leaf_hash
        if type(h) is not bytes or len(h) != HASH_SIZE:  # fast path for the common case
            h = _check_hash(h, "leaf hash")
        stack = self._stack
        n = self._size
        while n & 1:
            h = _sha256(_NODE_PREFIX + stack.pop() + h).digest()
            n >>= 1
        stack.append(h)
        self._size = self._size + 1

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def root(self) -> bytes:
        """Root of all leaves appended so far; ``EMPTY_ROOT`` when none."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        # The RFC splits off the largest power of two on the left, so the incomplete right
        # edge folds from the smallest subtree upwards.
        r = stack[-1]
        for h in reversed(stack[:-1]):
            r = _sha256(_NODE_PREFIX + h + r).digest()
        return r


class MerkleTree:
    """Tree over a LeafHashes; caches hashes of complete, aligned subtrees (they never change in an
    append-only tree) so roots and proofs for large trees cost far less than rehashing every leaf.

    Only subtrees of at least ``2**CACHE_MIN_LEVEL`` leaves are cached, keyed by
    ``(start, level)``, so the cache holds at most about ``size / 2**(CACHE_MIN_LEVEL - 1)``
    entries (~3% of the leaf count) and never needs invalidating. Smaller subtrees are rehashed
    on demand, which costs at most a few hundred hashes per root or proof.

    The tree reads its leaves from the :class:`LeafHashes` it was given and sees leaves appended
    to it directly as well as through :meth:`append`.
    """

    CACHE_MIN_LEVEL = 6
    """Smallest cached subtree is 2**6 = 64 leaves."""

    __slots__ = ("_cache", "_leaves")

    def __init__(self, leaves: LeafHashes | None = None) -> None:
        self._leaves = leaves if leaves is not None else LeafHashes()
        self._cache: dict[tuple[int, int], bytes] = {}

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf hash (cheap: hashing happens lazily, when roots/proofs are asked)."""
        self._leaves.append(leaf_hash)

    @property
    def size(self) -> int:
        """Number of leaves in the tree."""
        return len(self._leaves)

    @property
    def leaves(self) -> LeafHashes:
        """The underlying leaf-hash store."""
        return self._leaves

    # -- hashing -------------------------------------------------------------------------------

    def _fold(self, start: int, n: int) -> bytes:
        """Hash ``n`` (a power of two) leaves from ``start`` level by level, uncached."""
        level = self._leaves.slice(start, start + n)
        sha = _sha256
        pre = _NODE_PREFIX
        while len(level) > 1:
            level = [sha(pre + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        return level[0]

    def _perfect(self, start: int, level: int) -> bytes:
        """Hash of the complete subtree of ``2**level`` leaves at ``start`` (aligned)."""
        if level < self.CACHE_MIN_LEVEL:
            return self._fold(start, 1 << level)
        key = (start, level)
        h = self._cache.get(key)
        if h is None:
            if level == self.CACHE_MIN_LEVEL:
                h = self._fold(start, 1 << level)
            else:
                half = 1 << (level - 1)
                h = node_hash(
                    self._perfect(start, level - 1), self._perfect(start + half, level - 1)
                )
            self._cache[key] = h
        return h

    def _range(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range the RFC decomposition produces."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            if start & (n - 1) == 0:
                return self._perfect(start, level)
            return self._fold(start, n)  # pragma: no cover - RFC ranges are always aligned
        k = _split(n)
        return node_hash(self._range(start, start + k), self._range(start + k, end))

    def _size_arg(self, size: int | None, what: str = "size") -> int:
        if size is None:
            return self.size
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"{what} must be an int, not {type(size).__name__}")
        if not 0 <= size <= self.size:
            raise ProofError(f"{what} {size} is out of range: the tree has {self.size} leaves")
        return size

    # -- public API ----------------------------------------------------------------------------

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]): the root of the first ``size`` leaves (default: all of them)."""
        return self._range(0, self._size_arg(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.3.1 PATH(index, D[0:size]): the audit path from leaf to root, leaf first.

        Raises :class:`ProofError` unless ``0 <= index < size <= self.size``.
        """
        n = self._size_arg(size)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        if not 0 <= index < n:
            raise ProofError(f"index {index} is out of range for tree size {n}")
        path: list[bytes] = []
        start, m = 0, index
        while n > 1:
            k = _split(n)
            if m < k:
                path.append(self._range(start + k, start + n))
                n = k
            else:
                path.append(self._range(start, start + k))
                start, m, n = start + k, m - k, n - k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.4.1 PROOF(old_size, D[0:new_size]); empty when old_size is 0 or equal.

        Raises :class:`ProofError` unless ``0 <= old_size <= new_size <= self.size``.
        """
        n = self._size_arg(new_size, "new_size")
        if not isinstance(old_size, int) or isinstance(old_size, bool):
            raise TypeError(f"old_size must be an int, not {type(old_size).__name__}")
        if not 0 <= old_size <= n:
            raise ProofError(f"old_size {old_size} is out of range for new_size {n}")
        m = old_size
        if m == 0 or m == n:
            return []
        proof: list[bytes] = []
        start = 0
        complete = True  # SUBPROOF's b: is D[start:start+m] a subtree the verifier already has?
        while m != n:
            k = _split(n)
            if m <= k:
                proof.append(self._range(start + k, start + n))
                n = k
            else:
                proof.append(self._range(start, start + k))
                start, m, n = start + k, m - k, n - k
                complete = False
        if not complete:
            proof.append(self._range(start, start + m))
        proof.reverse()
        return proof


# -- verification (RFC 9162 2.1.3.2 and 2.1.4.2) -------------------------------------------------


def _is_hash(h: object) -> bool:
    return isinstance(h, bytes) and len(h) == HASH_SIZE


def _is_size(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows leaf ``index`` of the ``size``-leaf tree ``root`` is ``leaf_hash``.

    The RFC 9162 2.1.3.2 algorithm. Untrusted input never raises: any malformed argument
    (index out of range, wrong-length hash, proof too long or too short) just yields False.
    """
    if not (_is_size(index) and _is_size(size) and index < size):
        return False
    if not (_is_hash(leaf_hash) and _is_hash(root)):
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0 or not _is_hash(p):
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the ``old_size`` tree with ``old_root`` is a prefix of the
    ``new_size`` tree with ``new_root`` (RFC 9162 2.1.4.2).

    Trivial cases take an empty proof: equal sizes need equal roots, and the empty tree is a
    prefix of every tree. Never raises on untrusted input; malformed arguments yield False.
    """
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0:
        return len(proof) == 0
    if len(proof) == 0 or not all(_is_hash(p) for p in proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
