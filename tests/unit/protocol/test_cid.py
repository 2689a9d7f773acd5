"""CIDs must equal what an IPFS importer assigns, byte for byte.

The reference CIDs below were produced by the JavaScript IPFS importer
(``ipfs-unixfs-importer`` 17.1.1 with ``ipfs-unixfs`` 13.1.1 and ``@ipld/dag-pb``), run
with ``cidVersion: 1, rawLeaves: true``, a fixed-size chunker and the balanced layout,
over content fed in 100003-byte pieces. The content of size ``n`` is the first ``n``
bytes of SHAKE-256 of :data:`SEED` (a prefix of one long output, so one generation
serves every vector). Rows with chunk size 262144 and 174 links are the
``ipfs add --cid-version=1 --raw-leaves`` defaults; rows with tiny chunks and fan-out
reach trees several levels deep with little data.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.errors import InvalidCidError
from deai_flower.protocol.cid import (
    CHUNK_SIZE,
    CidHasher,
    cid_from_bytes,
    cid_to_bytes,
    compute_cid,
    compute_cid_of_file,
    validate_cid,
)

SEED = b"deai-flower cid vector"
K = CHUNK_SIZE

# (size, chunk_size, max_links, CID from the JavaScript importer)
VECTORS = [
    (0, K, 174, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
    (1, K, 174, "bafkreiepcgyf3j4f4q7hcpido5ggxu2alwm42mbev4zu77li3ntdvi3qgq"),
    (1000, K, 174, "bafkreigifyszvriv62pifkxmul6tidryjkgbepyhzfi7dftudrmuaa4cnu"),
    (K - 1, K, 174, "bafkreickntws32aiwbifwqgf2zc7joknz3wsolj7pl7ejknpibogixttru"),
    (K, K, 174, "bafkreidwthhuv7ampx3sa7gziyy6ozk5q4w6ap4joirst5zt6a3uj7ssr4"),
    (K + 1, K, 174, "bafybeia6mdiw5dglhpyiwlxdt3tliqiwds7dmtjxdakqduvnt57qzcxgfa"),
    (2 * K, K, 174, "bafybeifujn24eo2uyfsi4j6oxqtu32xoso6l3ps6sioexa7mxp3rbxqbom"),
    (174 * K, K, 174, "bafybeicvsxongsnvbsrfyx6f4pljngaqtcjf2rvfokn5b4le3mtyqwylku"),
    (174 * K + 1, K, 174, "bafybeicpxf2sc4wxblbp4cglswitzarqmncgxon4qtovmkmsf34zz2hd7u"),
    (175 * K + 7, K, 174, "bafybeihowyx6bv3wu2wusfnq6mzevls5nucgkhj6lontm227vlyhmaipr4"),
    (348 * K, K, 174, "bafybeidcafeouh52nonzngt6kprtyfqoenbfbkou6pslvxofoxavrsguxa"),
    (348 * K + 1, K, 174, "bafybeigxrtpbah7z3szlwo5qqoqdls3jd6kbztt62l5rfhmpoytagq65ny"),
    (50_000_000, K, 174, "bafybeih7ovczmvpv6qfg4oxzayd4qj2wrj7owg2z7ihwqkhio4rcq4dgma"),
    (0, 1024, 4, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
    (1, 1024, 4, "bafkreiepcgyf3j4f4q7hcpido5ggxu2alwm42mbev4zu77li3ntdvi3qgq"),
    (1023, 1024, 4, "bafkreia5mkkh25j2leovb4hhav3rujxbzh3kfbdt6l3fbvoi4clozvhstu"),
    (1024, 1024, 4, "bafkreieaa2eafc3iwhdnzyd4w43rzpa6poomoylb5vylhxxule7c6dzqfm"),
    (1025, 1024, 4, "bafybeie5gtqfkiky5qdgwe4rarwn3jsjjqphshqc4scthb5kxxuyi3fsae"),
    (3077, 1024, 4, "bafybeidibqsg2wsf3uo2p5itnuhber63vbdbnqjocftgrrsqen7wk32h24"),
    (4096, 1024, 4, "bafybeie2ll5wikw6tcpue4mlmvh5vblufeeravwljdr6ty6fxttkvknnim"),
    (4097, 1024, 4, "bafybeibbebojnmlrsngzlczudipzusdcq5qlbtfgb4fen5vwmpegue6a5u"),
    (16384, 1024, 4, "bafybeicx4axm7ja63qfmai4a3jj6taat57efk4z2k3dis776gvnhlnlhwm"),
    (16385, 1024, 4, "bafybeicivfbt457de66xgb54xy4q2nhsovzyxxyzrftkbplksiy2vut6ca"),
    (65536, 1024, 4, "bafybeiaj3lurm7kkmdfkb6jeou7fvar3l2enzlhb4dim73hxvc5mul4t6u"),
    (65537, 1024, 4, "bafybeie7hvf66mky3w2zxsgieymzieaotpjs6tn6btyv4cqyctg4ra2pvi"),
    (100000, 1024, 4, "bafybeie7rj7yw3agfi3ac5b4kdq56spr4rk5izmrsbzeyztvyxn5gyron4"),
    (0, 8, 2, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
    (7, 8, 2, "bafkreigktipjg2g6djhlbyywf7g2fulgolwnyrjcuwf5nc2jaqar3imqkm"),
    (8, 8, 2, "bafkreihepigvph3ggscac4hhin2365ntlgusxby3nj6k3olnsj2ks7rasi"),
    (9, 8, 2, "bafybeicvnm4qnlcpabu3p6xcktwimpqs722f2pww2vis76kmarb6ev6nbu"),
    (64, 8, 2, "bafybeigdeyy7l2hq35fhwdfyvkimqlaay3hie2ebexgx3au6o2o3kwalt4"),
    (65, 8, 2, "bafybeigzdemakf2uy5zssqwcyburcenzyq45mweguw3z3ay6yeez3wahmq"),
    (200, 8, 2, "bafybeialr34kck7jgfnl5e5hlqtrlrc4nobuf4qd7yegmq435rqhjhgjua"),
    (513, 8, 2, "bafybeihmh35kufl2rpdkeaumpze62y62jwsww53clm3tmgug3zmjcsmusu"),
]
DEFAULT_VECTORS = [v for v in VECTORS if v[1:3] == (K, 174)]
SMALL_TREE_VECTORS = [v for v in VECTORS if v[1:3] != (K, 174)]
_MAX_SIZE = max(size for size, *_ in VECTORS)
_content_cache: list[bytes] = []


def content(size: int) -> memoryview:
    """The first ``size`` bytes of SHAKE-256(SEED), generated once per test session."""
    if not _content_cache:
        _content_cache.append(hashlib.shake_256(SEED).digest(_MAX_SIZE))
    return memoryview(_content_cache[0])[:size]


def _write_temp(data: bytes | memoryview) -> str:
    handle, path = tempfile.mkstemp()
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return path


def _text(raw: bytes, prefix: str = "b") -> str:
    return prefix + base64.b32encode(raw).decode().rstrip("=").lower()


@pytest.mark.parametrize(("size", "chunk", "links", "expected"), DEFAULT_VECTORS)
def test_compute_cid_matches_ipfs_importer(
    size: int, chunk: int, links: int, expected: str
) -> None:
    assert compute_cid(content(size)) == expected
    assert compute_cid(bytes(content(size))) == expected


@pytest.mark.parametrize(("size", "chunk", "links", "expected"), SMALL_TREE_VECTORS)
def test_deep_trees_match_ipfs_importer(
    size: int, chunk: int, links: int, expected: str
) -> None:
    hasher = CidHasher(chunk_size=chunk, max_links=links)
    hasher.update(content(size))
    assert hasher.finalize() == expected


@pytest.mark.parametrize(("size", "expected"), [(v[0], v[3]) for v in DEFAULT_VECTORS[:10]])
def test_compute_cid_of_file_matches_vectors(size: int, expected: str) -> None:
    path = _write_temp(content(size))
    try:
        assert compute_cid_of_file(path) == expected
    finally:
        os.unlink(path)


def test_known_raw_block_cids() -> None:
    assert compute_cid(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert compute_cid(b"hello world") == (
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    )


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=0, max_value=3 * K + 5))
def test_file_and_memory_agree(size: int) -> None:
    data = content(size)
    path = _write_temp(data)
    try:
        assert compute_cid_of_file(path) == compute_cid(data)
    finally:
        os.unlink(path)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=600),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
def test_framing_does_not_change_the_cid(size: int, cuts: list[int]) -> None:
    data = bytes(content(size))
    whole = CidHasher(chunk_size=8, max_links=2)
    whole.update(data)
    pieces = CidHasher(chunk_size=8, max_links=2)
    bounds = [0, *sorted(min(cut, size) for cut in cuts), size]
    for start, end in zip(bounds, bounds[1:]):
        pieces.update(data[start:end])
    assert pieces.finalize() == whole.finalize()


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=2048))
def test_binary_round_trip(data: bytes) -> None:
    cid = compute_cid(data)
    raw = cid_to_bytes(cid)
    assert len(raw) == 36
    assert raw[:4] == bytes((1, 0x55, 0x12, 0x20))
    assert raw[4:] == hashlib.sha256(data).digest()
    assert cid_from_bytes(raw) == cid
    assert validate_cid(cid) == cid


def test_dag_pb_round_trip() -> None:
    cid = compute_cid(content(K + 1))
    raw = cid_to_bytes(cid)
    assert raw[:4] == bytes((1, 0x70, 0x12, 0x20))
    assert cid_from_bytes(raw) == cid


def test_finalize_is_stable_and_closes_the_hasher() -> None:
    hasher = CidHasher()
    hasher.update(b"abc")
    assert hasher.finalize() == hasher.finalize() == compute_cid(b"abc")
    with pytest.raises(RuntimeError):
        hasher.update(b"more")


_DIGEST = hashlib.sha256(b"x").digest()
_GOOD = _text(bytes((1, 0x55, 0x12, 0x20)) + _DIGEST)


@pytest.mark.parametrize(
    ("cid", "message"),
    [
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "CIDv0"),
        ("", "multibase"),
        ("hello", "multibase"),
        (_GOOD.upper(), "multibase"),  # 'B' is base32 upper case
        ("z" + _GOOD[1:], "multibase"),
        ("f01551220" + _DIGEST.hex(), "multibase"),
        (_GOOD + "!", "base32"),
        (_GOOD[:-1], "base32"),  # 57 characters: no byte string has that length
        (_GOOD[:-2], "digest"),  # a whole byte short
        (_text(bytes((1, 0x71, 0x12, 0x20)) + _DIGEST), "codec"),  # dag-cbor
        (_text(bytes((1, 0x55, 0x13, 0x40)) + _DIGEST * 2), "hash"),  # sha2-512
        (_text(bytes((1, 0x55, 0x00, 0x01)) + b"x"), "hash"),  # identity
        (_text(bytes((2, 0x55, 0x12, 0x20)) + _DIGEST), "version"),
        (_text(bytes((0x81, 0x00, 0x55, 0x12, 0x20)) + _DIGEST), "non-minimal"),
        (_text(bytes((1, 0x55, 0x12, 0x20)) + _DIGEST + b"\x00"), "digest"),
        (_GOOD[:-1] + "b", "canonical"),  # same bytes, non-zero padding bits
    ],
)
def test_validate_cid_rejects(cid: str, message: str) -> None:
    with pytest.raises(InvalidCidError, match=message):
        validate_cid(cid)


def test_validate_cid_rejects_non_strings() -> None:
    with pytest.raises(InvalidCidError, match="string"):
        validate_cid(b"bafk")  # type: ignore[arg-type]


def test_cid_from_bytes_rejects_cidv0_multihash() -> None:
    with pytest.raises(InvalidCidError, match="CIDv0"):
        cid_from_bytes(bytes((0x12, 0x20)) + _DIGEST)


@pytest.mark.parametrize(("chunk_size", "max_links"), [(0, 174), (K, 1)])
def test_hasher_rejects_degenerate_shapes(chunk_size: int, max_links: int) -> None:
    with pytest.raises(ValueError):
        CidHasher(chunk_size=chunk_size, max_links=max_links)
