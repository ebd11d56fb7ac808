"""Tests for trustplane.telemetry.merkle against RFC 9162 and the CT test vectors."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.telemetry.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Frontier,
    LeafHashes,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# -- naive reference, written straight from RFC 9162 section 2.1 ---------------------------------


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) over leaf *hashes* (the RFC's leaf step already applied)."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = _k(n)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m < n; empty otherwise (as the API defines)."""
    if m == 0 or m == len(d):
        return []
    return ref_subproof(m, d, True)


# -- helpers -------------------------------------------------------------------------------------


def make_leaves(n: int, seed: int = 0) -> list[bytes]:
    return [leaf_hash(seed.to_bytes(8, "big") + i.to_bytes(4, "big")) for i in range(n)]


def make_tree(leaves: list[bytes]) -> MerkleTree:
    t = MerkleTree()
    for h in leaves:
        t.append(h)
    return t


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


OTHER = hashlib.sha256(b"some other hash").digest()

# -- RFC 6962 / 9162 known answers (from the CT / transparency-dev/merkle test suites) -----------

CT_DATA = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, proof)
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
# (old size, new size, proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


@pytest.fixture(scope="module")
def ct_tree() -> MerkleTree:
    return make_tree([leaf_hash(d) for d in CT_DATA])


def test_primitives() -> None:
    assert HASH_SIZE == 32
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"").hex() == CT_ROOTS[1]
    assert leaf_hash(b"ab") == hashlib.sha256(b"\x00ab").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) != node_hash(b, a)


def test_ct_roots(ct_tree: MerkleTree) -> None:
    assert ct_tree.size == 8
    f = Frontier()
    assert f.root().hex() == CT_ROOTS[0]
    for n in range(9):
        assert ct_tree.root(n).hex() == CT_ROOTS[n], n
        if n:
            f.append(ct_tree.leaves[n - 1])
            assert f.root().hex() == CT_ROOTS[n], n
    assert ct_tree.root().hex() == CT_ROOTS[8]


@pytest.mark.parametrize(("index", "size", "proof_hex"), CT_INCLUSION)
def test_ct_inclusion_vectors(
    ct_tree: MerkleTree, index: int, size: int, proof_hex: list[str]
) -> None:
    proof = [bytes.fromhex(h) for h in proof_hex]
    assert ct_tree.inclusion_proof(index, size) == proof
    root = bytes.fromhex(CT_ROOTS[size])
    leaf = ct_tree.leaves[index]
    assert verify_inclusion(leaf, index, size, proof, root)
    # The corruptions transparency-dev/merkle's verifier tests apply.
    probes = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (OTHER, index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof, OTHER),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [root, *proof], root),
        (leaf, index, size, [*proof, b""], root),
    ]
    for i in range(len(proof)):
        probes.append((leaf, index, size, [*proof[:i], flip(proof[i], 3), *proof[i + 1 :]], root))
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    for args in probes:
        assert not verify_inclusion(*args), args[1:3]


@pytest.mark.parametrize(("old", "new", "proof_hex"), CT_CONSISTENCY)
def test_ct_consistency_vectors(
    ct_tree: MerkleTree, old: int, new: int, proof_hex: list[str]
) -> None:
    proof = [bytes.fromhex(h) for h in proof_hex]
    assert ct_tree.consistency_proof(old, new) == proof
    r1, r2 = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    assert verify_consistency(old, new, r1, r2, proof)
    if not proof:
        return
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, OTHER, r2, proof),
        (old, new, r1, OTHER, proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        probes.append((old, new, r1, r2, [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]]))
    for args in probes:
        assert not verify_consistency(*args), args[:2]


def test_trivial_consistency() -> None:
    # Mirrors TestVerifyConsistency in transparency-dev/merkle.
    r1, r2 = OTHER, flip(OTHER)
    assert verify_consistency(0, 0, r1, r1, [])
    assert verify_consistency(0, 5, r1, r2, [])  # the empty tree is a prefix of everything
    assert verify_consistency(3, 3, r2, r2, [])
    assert not verify_consistency(0, 0, r1, r2, [])
    assert not verify_consistency(3, 3, r1, r2, [])
    assert not verify_consistency(1, 0, r1, r2, [])  # time travel
    assert not verify_consistency(2, 1, r1, r2, [])
    assert not verify_consistency(1, 2, r1, r2, [])  # missing proof
    assert not verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(-1, 1, r1, r2, [])


def test_verify_inclusion_degenerate() -> None:
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    for index, size in [(0, 0), (1, 0), (2, 1), (-1, 1), (1, 1)]:
        assert not verify_inclusion(h, index, size, [], h)
        assert not verify_inclusion(h, index, size, [], EMPTY_ROOT)


# -- property tests against the reference --------------------------------------------------------

sizes = st.integers(min_value=0, max_value=300)
seeds = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=200, deadline=None)
@given(n=sizes, seed=seeds, data=st.data())
def test_roots_match_reference(n: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, seed)
    tree = make_tree(leaves)
    frontier = Frontier()
    for h in leaves:
        frontier.append(h)
    want = ref_mth(leaves)
    assert tree.root() == want
    assert tree.root(n) == want
    assert frontier.size == n
    assert frontier.root() == want
    m = data.draw(st.integers(0, n), label="prefix")
    assert tree.root(m) == ref_mth(leaves[:m])
    assert tree.root() == want  # and again, now from the cache


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), seed=seeds, data=st.data())
def test_inclusion_proofs(n: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, seed)
    tree = make_tree(leaves)
    size = data.draw(st.integers(1, n), label="size")
    i = data.draw(st.integers(0, size - 1), label="index")
    root = tree.root(size)
    proof = tree.inclusion_proof(i, size)
    assert proof == ref_path(i, leaves[:size])
    assert verify_inclusion(leaves[i], i, size, proof, root)
    if size == n:
        assert tree.inclusion_proof(i) == proof

    for j, p in enumerate(proof):
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = p[: bit // 8] + bytes([p[bit // 8] ^ (1 << (bit % 8))]) + p[bit // 8 + 1 :]
        assert not verify_inclusion(leaves[i], i, size, [*proof[:j], bad, *proof[j + 1 :]], root)
        assert not verify_inclusion(leaves[i], i, size, [*proof[:j], *proof[j + 1 :]], root)
    assert not verify_inclusion(flip(leaves[i]), i, size, proof, root)
    assert not verify_inclusion(leaves[i], i, size, proof, flip(root, 7))
    assert not verify_inclusion(leaves[i], i, size, [*proof, OTHER], root)
    for j in range(size + 1):
        if j != i:
            assert not verify_inclusion(leaves[i], j, size, proof, root), j
    assert not verify_inclusion(leaves[i], i, size * 2, proof, root)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 120), seed=seeds)
def test_every_inclusion_proof_verifies(n: int, seed: int) -> None:
    leaves = make_leaves(n, seed)
    tree = make_tree(leaves)
    root = tree.root()
    for i in range(n):
        assert verify_inclusion(leaves[i], i, n, tree.inclusion_proof(i), root)


@settings(max_examples=200, deadline=None)
@given(n=sizes, seed=seeds, data=st.data())
def test_consistency_proofs(n: int, seed: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, seed)
    tree = make_tree(leaves)
    new = data.draw(st.integers(0, n), label="new")
    old = data.draw(st.integers(0, new), label="old")
    r1, r2 = tree.root(old), tree.root(new)
    proof = tree.consistency_proof(old, new)
    assert proof == ref_proof(old, leaves[:new])
    assert verify_consistency(old, new, r1, r2, proof)
    if new == n:
        assert tree.consistency_proof(old) == proof
    if not proof:
        assert old in (0, new)
        return

    for j, p in enumerate(proof):
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = p[: bit // 8] + bytes([p[bit // 8] ^ (1 << (bit % 8))]) + p[bit // 8 + 1 :]
        assert not verify_consistency(old, new, r1, r2, [*proof[:j], bad, *proof[j + 1 :]])
        assert not verify_consistency(old, new, r1, r2, [*proof[:j], *proof[j + 1 :]])
    assert not verify_consistency(old, new, flip(r1), r2, proof)
    assert not verify_consistency(old, new, r1, flip(r2), proof)
    assert not verify_consistency(old, new, r2, r1, proof)
    assert not verify_consistency(old, new, r1, r2, [*proof, OTHER])
    assert not verify_consistency(old, new, r1, r2, [OTHER, *proof])
    assert not verify_consistency(new, old, r2, r1, proof)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), seed=seeds)
def test_all_consistency_pairs(n: int, seed: int) -> None:
    leaves = make_leaves(n, seed)
    tree = make_tree(leaves)
    roots = [tree.root(m) for m in range(n + 1)]
    for new in range(n + 1):
        for old in range(new + 1):
            proof = tree.consistency_proof(old, new)
            assert verify_consistency(old, new, roots[old], roots[new], proof), (old, new)


def test_frontier_matches_tree_incrementally() -> None:
    leaves = make_leaves(600, seed=7)
    tree, frontier = MerkleTree(), Frontier()
    for i, h in enumerate(leaves):
        tree.append(h)
        frontier.append(h)
        if i % 13 == 0 or i > 500:
            assert frontier.root() == tree.root(), i
    assert frontier.root() == ref_mth(leaves)


# -- LeafHashes, argument checking ---------------------------------------------------------------


def test_leaf_hashes_store() -> None:
    hs = make_leaves(5)
    store = LeafHashes()
    store.append(hs[0])
    store.extend(hs[1:])
    assert len(store) == 5
    assert [store[i] for i in range(5)] == hs
    assert store[-1] == hs[-1]
    assert list(store) == hs
    assert store.slice(1, 3) == hs[1:3]
    with pytest.raises(IndexError):
        store[5]
    with pytest.raises(IndexError):
        store[-6]
    with pytest.raises(IndexError):
        store.slice(3, 6)
    with pytest.raises(ValueError, match="32 bytes"):
        store.append(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        store.extend([hs[0], b"x" * 33])
    assert len(store) == 5  # extend is all-or-nothing
    with pytest.raises(TypeError):
        store.append("not bytes" * 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Frontier().append(b"\x00" * 31)


def test_tree_shares_leaf_store() -> None:
    store = LeafHashes(make_leaves(100))
    tree = MerkleTree(store)
    assert tree.leaves is store
    r100 = tree.root()
    store.extend(make_leaves(30, seed=1))
    assert tree.size == 130
    assert tree.root(100) == r100
    assert tree.root() == ref_mth(list(store))


def test_proof_errors(ct_tree: MerkleTree) -> None:
    with pytest.raises(ProofError, match="9"):
        ct_tree.root(9)
    with pytest.raises(ProofError, match="-1"):
        ct_tree.root(-1)
    with pytest.raises(ProofError, match="index 8"):
        ct_tree.inclusion_proof(8)
    with pytest.raises(ProofError, match="index 3"):
        ct_tree.inclusion_proof(3, 3)
    with pytest.raises(ProofError, match="index -1"):
        ct_tree.inclusion_proof(-1)
    with pytest.raises(ProofError, match="size 9"):
        ct_tree.inclusion_proof(0, 9)
    with pytest.raises(ProofError, match="index 0"):
        ct_tree.inclusion_proof(0, 0)
    with pytest.raises(ProofError, match="old_size 5"):
        ct_tree.consistency_proof(5, 4)
    with pytest.raises(ProofError, match="old_size -1"):
        ct_tree.consistency_proof(-1)
    with pytest.raises(ProofError, match="new_size 9"):
        ct_tree.consistency_proof(1, 9)
    assert issubclass(ProofError, ValueError)
    assert MerkleTree().root() == EMPTY_ROOT
    assert MerkleTree().consistency_proof(0) == []


def test_large_tree_performance() -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(100_000)]
    frontier = Frontier()
    for h in leaves:
        frontier.append(h)
    tree = MerkleTree(LeafHashes(leaves))
    assert tree.root() == frontier.root()
    start = time.perf_counter()
    for _ in range(100):
        tree.root()
    assert time.perf_counter() - start < 0.5  # cached: no rehashing of the 100k leaves
    tree.append(leaf_hash(b"one more"))
    frontier.append(leaf_hash(b"one more"))
    assert tree.root() == frontier.root()
    i = 77_777
    assert verify_inclusion(leaves[i], i, tree.size, tree.inclusion_proof(i), tree.root())
    old = 65_537
    proof = tree.consistency_proof(old)
    assert verify_consistency(old, tree.size, tree.root(old), tree.root(), proof)
