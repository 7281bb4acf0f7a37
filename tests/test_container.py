"""The .vqrf container codec: exact round trips, coder choice, and decoding of hostile bytes."""

from __future__ import annotations

import bisect
import json
import lzma
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqrf.compress import container
from vqrf.compress.container import (DTYPES, MAGIC, MAX_ELEMENTS, VERSION, applicable_coders, decode_container,
                                     encode_container, section_sizes)
from vqrf.errors import VqrfError

SRC = "test.vqrf"
TABLE_AT = len(MAGIC) + 6  # magic, u16 version, u32 table length


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values over the dtype's whole range (floats: any bit pattern, so NaN payloads, infinities and subnormals)."""
    if dtype == "bool":
        return rng.random(shape) < 0.3
    dt = np.dtype(dtype)
    if dt.kind == "f":
        bits = rng.integers(0, 256, (*shape, dt.itemsize), dtype=np.uint8)
        return bits.view(dt).reshape(shape)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dt)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and bits."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def split(data: bytes) -> tuple[dict, bytes]:
    """(table, payload bytes) of a container."""
    n = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    return json.loads(zlib.decompress(data[TABLE_AT:TABLE_AT + n])), data[TABLE_AT + n + 4:]


def assemble(table: object, payloads: bytes) -> bytes:
    """A container around any JSON table, with a correct table CRC."""
    raw = zlib.compress(json.dumps(table).encode())
    return MAGIC + struct.pack("<HI", VERSION, len(raw)) + raw + struct.pack("<I", zlib.crc32(raw)) + payloads


def section(name: str, dtype: str, shape: list[int], coder: str, payload: bytes) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, "coder": coder, "length": len(payload),
            "crc32": zlib.crc32(payload)}


def small_sections() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "mask": rng.random((11, 7)) < 0.2,
        "idx": (rng.geometric(0.05, 300) % 200).astype(np.int16),
        "codebook": rng.standard_normal((16, 4)).astype(np.float16),
        "small": rng.integers(-3, 3, 64).astype(np.int8),
        "bytes": np.repeat(rng.integers(0, 255, 16), 8).astype(np.uint8),
        "scale": np.float32(0.25) * np.ones(3, np.float32),
        "zero_d": np.array(7, np.int32),
        "empty": np.zeros((0, 5), np.uint16),
    }


# One section per coder, so every decoder sees the mutations.
SMALL_CODERS = {"mask": ["zlib"], "idx": ["ans"], "codebook": ["shuffle+lzma"], "small": ["lzma"],
                "bytes": ["zlib"], "scale": ["raw"], "zero_d": ["ans"], "empty": ["raw"]}


SMALL = encode_container({"config": {"grid": [8, 8, 8]}, "bbox": [[-1.5, -1, -1], [1, 1, 1.25]]},
                         small_sections(), SMALL_CODERS)


def decodes_or_refuses(data: bytes) -> None:
    """Decoding either succeeds or raises VqrfError; any other exception fails the test."""
    try:
        decode_container(data, SRC)
    except VqrfError as err:
        assert err.path == SRC and "\n" not in err.problem


# ---------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (5,), (13, 3), (2, 3, 4, 5)])
def test_every_coder_round_trips_every_dtype(dtype: str, shape: tuple[int, ...]) -> None:
    arr = random_array(dtype, shape, np.random.default_rng(zlib.crc32(f"{dtype}{shape}".encode())))
    for coder in applicable_coders(arr):
        data = encode_container({"k": [1, "two", None]}, {"a": arr}, {"a": [coder]})
        header, out = decode_container(data, SRC)
        assert header == {"k": [1, "two", None]}
        assert list(out) == ["a"] and section_sizes(data, SRC)[0]["coder"] == coder
        assert_same(out["a"], arr)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "int32", "float16", "float32"])
def test_single_value_arrays(dtype: str) -> None:
    arr = np.full((40, 3), 5, dtype)
    for coder in applicable_coders(arr):
        assert_same(decode_container(encode_container({}, {"a": arr}, {"a": [coder]}), SRC)[1]["a"], arr)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 17, 63, 161])
def test_bool_masks_of_any_length(n: int) -> None:
    mask = np.random.default_rng(n).random(n) < 0.5
    data = encode_container({}, {"m": mask, "m3": mask.reshape(1, n, 1)})
    out = decode_container(data, SRC)[1]
    assert_same(out["m"], mask)
    assert_same(out["m3"], mask.reshape(1, n, 1))


def test_raw_bool_layout_is_msb_first_zero_padded() -> None:
    data = encode_container({}, {"m": np.array([True, False, True, True, False, False, False, False, True])},
                            {"m": ["raw"]})
    assert split(data)[1] == bytes([0b10110000, 0b10000000])


def test_sections_keep_their_order_and_values() -> None:
    sections = small_sections()
    header, out = decode_container(encode_container({"x": 1}, sections), SRC)
    assert header == {"x": 1} and list(out) == list(sections)
    for name, arr in sections.items():
        assert_same(out[name], arr)
        assert out[name].flags.writeable


def test_big_endian_and_strided_inputs_decode_to_native_arrays() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(-1000, 1000, (6, 5)).astype(">i2")
    strided = rng.standard_normal((8, 6)).astype(np.float32).T[::2]
    out = decode_container(encode_container({}, {"big": big, "strided": strided}), SRC)[1]
    assert out["big"].dtype == np.int16 and np.array_equal(out["big"], big)
    assert_same(out["strided"], strided)


def test_ans_alphabet_limits() -> None:
    full = np.array([0, 65535, 3], np.uint16)  # range exactly 65536: the largest ans alphabet
    wide = np.array([-5, 65530, 0], np.int32)
    too_wide = np.array([0, 65536], np.int32)
    for arr in (full, wide):
        assert "ans" in applicable_coders(arr)
        assert_same(decode_container(encode_container({}, {"a": arr}, {"a": ["ans"]}), SRC)[1]["a"], arr)
    assert "ans" not in applicable_coders(too_wide)
    with pytest.raises(ValueError):
        encode_container({}, {"a": too_wide}, {"a": ["ans"]})
    extremes = np.array([-2**31, -2**31 + 1, -2**31], np.int32)
    assert_same(decode_container(encode_container({}, {"a": extremes}, {"a": ["ans"]}), SRC)[1]["a"], extremes)


def test_encoder_refuses_what_it_cannot_store() -> None:
    with pytest.raises(ValueError, match="dtype"):
        encode_container({}, {"a": np.zeros(3, np.int64)})
    with pytest.raises(ValueError, match="coders"):
        encode_container({}, {"a": np.zeros(3, np.float32)}, {"a": ["ans"]})
    with pytest.raises(ValueError, match="unknown sections"):
        encode_container({}, {"a": np.zeros(3, np.float32)}, {"b": ["raw"]})
    with pytest.raises(ValueError):
        encode_container({"x": float("nan")}, {})  # strict JSON only


def test_encoding_is_deterministic() -> None:
    assert encode_container({"a": 1}, small_sections()) == encode_container({"a": 1}, small_sections())


# ---------------------------------------------------------------------------------------------------------------
# Coder choice and sizes


def zipf_symbols(n: int, alphabet: int, seed: int) -> np.ndarray:
    """int16 symbols in [-alphabet/2, alphabet/2) drawn with P(rank k) ~ k^-1.1 over a shuffled alphabet."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, alphabet + 1) ** 1.1
    ranks = rng.choice(alphabet, n, p=p / p.sum())
    return (rng.permutation(alphabet)[ranks] - alphabet // 2).astype(np.int16)


def test_large_alphabet_zipf_picks_ans_near_entropy() -> None:
    n = 200_000
    x = zipf_symbols(n, 4096, seed=1)
    freq = np.bincount(x.astype(np.int64) + 2048) / n
    entropy = -(freq[freq > 0] * np.log2(freq[freq > 0])).sum()
    data = encode_container({}, {"idx": x})
    (info,) = section_sizes(data, SRC)
    bits = 8 * info["bytes"] / n
    assert info["coder"] == "ans"
    assert bits < 12 - 3  # the 12-bit fixed-width code of a 4096-symbol alphabet
    assert bits < entropy + 0.2  # the histogram (about 3 KB here) and ANS together cost little over the entropy
    assert_same(decode_container(data, SRC)[1]["idx"], x)


def test_chosen_coder_is_the_smallest() -> None:
    rng = np.random.default_rng(5)
    cases = {
        "mask": rng.random((160, 160)) < 0.05,
        "idx": zipf_symbols(20_000, 512, seed=2),
        "feat": (rng.standard_normal((500, 12)) * 0.1).astype(np.float16),
        "q": np.clip(rng.normal(0, 6, 5000), -127, 127).astype(np.int8),
        "noise": rng.integers(0, 256, 300).astype(np.uint8),
        "f32": np.linspace(0, 1, 1000, dtype=np.float32),
        "u16": np.arange(2000, dtype=np.uint16),
    }
    data = encode_container({}, cases)
    sizes = {row["name"]: row for row in section_sizes(data, SRC)}
    table, payloads = split(data)
    assert len(payloads) == sum(row["bytes"] for row in sizes.values())
    for name, arr in cases.items():
        forced = {c: section_sizes(encode_container({}, {name: arr}, {name: [c]}), SRC)[0]["bytes"]
                  for c in applicable_coders(arr)}
        row = sizes[name]
        assert row["bytes"] == min(forced.values()) == forced[row["coder"]], (name, forced)
        assert row["dtype"] == arr.dtype.name and row["shape"] == arr.shape
        assert row["raw_bytes"] == ((arr.size + 7) // 8 if arr.dtype == bool else arr.nbytes)
    assert sizes["idx"]["coder"] == "ans"
    assert sizes["feat"]["coder"] == "shuffle+lzma"


def test_caller_candidates_restrict_the_choice() -> None:
    x = zipf_symbols(5000, 512, seed=3)
    data = encode_container({}, {"a": x, "b": x}, {"a": ["raw", "zlib"]})
    coders = [row["coder"] for row in section_sizes(data, SRC)]
    assert coders == ["zlib", "ans"]


# ---------------------------------------------------------------------------------------------------------------
# The ans payload as docs/format.md describes it, decoded without constriction


def doc_ans_decode(payload: bytes, n: int) -> list[int]:
    """Decode an ans payload following docs/format.md step by step (pure Python)."""
    lo, k, c = struct.unpack_from("<iII", payload)
    block = zlib.decompress(payload[12:12 + c])
    counts, value, shift = [], 0, 0
    for byte in block:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            counts.append(value)
            value, shift = 0, 0
    assert len(counts) == k and sum(counts) == n
    words = list(struct.unpack_from(f"<{(len(payload) - 12 - c) // 4}I", payload, 12 + c))
    if k == 1:
        return [lo] * n
    scale = float(2**24 - k) / float(n)
    cdf, cum = [], 0
    for i, count in enumerate(counts):
        cdf.append(int(float(cum) * scale) + i)
        cum += count
    cdf.append(2**24)
    state = words.pop() if words else 0
    if words:
        state = state << 32 | words.pop()
    out = []
    for _ in range(n):
        q = state & (2**24 - 1)
        s = bisect.bisect_right(cdf, q) - 1
        state = (cdf[s + 1] - cdf[s]) * (state >> 24) + q - cdf[s]
        if state < 2**32 and words:
            state = state << 32 | words.pop()
        out.append(lo + s)
    assert state == 0 and not words
    return out


@pytest.mark.parametrize("alphabet,n", [(2, 50), (7, 1), (300, 3000), (4096, 800)])
def test_documented_ans_decoder_matches(alphabet: int, n: int) -> None:
    x = zipf_symbols(n, alphabet, seed=alphabet)
    x[0], x[-1] = -(alphabet // 2), alphabet - 1 - alphabet // 2  # both ends of the alphabet in use
    payload = split(encode_container({}, {"x": x}, {"x": ["ans"]}))[1]
    assert doc_ans_decode(payload, n) == x.tolist()


def test_documented_quantisation_matches_constriction() -> None:
    """With an empty coder, encoding symbol s leaves state = cdf[s], so the coder reveals constriction's table."""
    import constriction

    counts = np.array([5, 0, 1, 1000, 37, 0, 0, 2, 90_000, 3], np.int64)
    model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
    scale = float(2**24 - len(counts)) / float(counts.sum())
    for s in range(len(counts)):
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(np.array([s], np.int32), model)
        words = coder.get_compressed()
        state = int(words[0]) if len(words) else 0
        assert state == int(float(counts[:s].sum()) * scale) + s


# ---------------------------------------------------------------------------------------------------------------
# Hostile input


def refused(data: bytes, match: str | None = None) -> VqrfError:
    """Assert decoding raises VqrfError (matching ``match``) and section_sizes agrees."""
    with pytest.raises(VqrfError, match=match) as info:
        decode_container(data, SRC)
    err = info.value
    assert err.path == SRC and "\n" not in err.problem
    if err.problem.startswith("bad section '"):
        section_sizes(data, SRC)  # a payload that does not decode is found only by decoding it
    else:
        with pytest.raises(VqrfError):
            section_sizes(data, SRC)
    return err


def test_empty_file_and_wrong_magic() -> None:
    refused(b"", "empty file")
    refused(b"PK\x03\x04" + SMALL[4:], "not a .vqrf file")
    refused(b"\x89VQRF\n\x1a" + SMALL[8:], "text mode")
    refused(b"\x89VQRF\r\r\n\x1a" + SMALL[8:], "text mode")
    refused(b"{}", "not a .vqrf file")


def test_versions() -> None:
    newer = SMALL[:8] + struct.pack("<H", VERSION + 1) + SMALL[10:]
    err = refused(newer, "newer vqrf")
    assert f"container version {VERSION + 1}" in err.problem and "upgrade vqrf" in err.problem
    refused(SMALL[:8] + b"\x00\x00" + SMALL[10:], "unsupported container version 0")


def test_every_truncation_is_refused() -> None:
    assert list(decode_container(SMALL, SRC)[1]) == list(small_sections())
    for n in range(len(SMALL)):
        refused(SMALL[:n], "empty file|truncated")


def test_trailing_bytes_are_refused() -> None:
    refused(SMALL + b"\x00", "unexpected byte")


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_byte_flip_is_refused(mask: int) -> None:
    for i in range(len(SMALL)):
        bad = bytearray(SMALL)
        bad[i] ^= mask
        refused(bytes(bad))


def rewrite(data: bytes, edit) -> bytes:
    """The container with edit(table) applied and the table CRC recomputed."""
    table, payloads = split(data)
    edit(table)
    return assemble(table, payloads)


@pytest.mark.parametrize("field,value,match", [
    ("shape", [2**20, 2**20], "elements"),
    ("shape", [MAX_ELEMENTS + 1, 0], "elements"),
    ("shape", [-1], "non-negative"),
    ("shape", [True, 3], "non-negative"),
    ("shape", [1.5], "non-negative"),
    ("shape", [1] * 40, "at most"),
    ("shape", "7", "shape"),
    ("length", -4, "length"),
    ("length", 2**70, "truncated"),
    ("length", "12", "length"),
    ("crc32", 2**32, "crc32"),
    ("coder", "brotli", "unknown coder"),
    ("coder", None, "unknown coder"),
    ("dtype", "float64", "unknown dtype"),
    ("dtype", ["int16"], "unknown dtype"),
    ("name", 5, "name"),
])
def test_nonsense_table_entries_are_refused(field: str, value: object, match: str) -> None:
    def edit(table):
        table["sections"][1][field] = value
    refused(rewrite(SMALL, edit), match)


def test_inconsistent_tables_are_refused() -> None:
    def shift_length(delta):
        def edit(table):
            table["sections"][1]["length"] += delta
        return edit

    refused(rewrite(SMALL, shift_length(1)))
    refused(rewrite(SMALL, shift_length(-1)))
    refused(rewrite(SMALL, lambda t: t["sections"].pop(-2)), "unexpected byte")
    refused(rewrite(SMALL, lambda t: t["sections"][2].update(name=t["sections"][0]["name"])), "repeated")
    refused(rewrite(SMALL, lambda t: t["sections"][0].update(dtype="uint8")), "bad section")  # wrong size
    refused(rewrite(SMALL, lambda t: t["sections"][2].update(dtype="int8")), "does not apply")  # shuffle on 1 byte
    refused(rewrite(SMALL, lambda t: t["sections"][3].update(dtype="float16", coder="ans")), "does not apply")
    refused(rewrite(SMALL, lambda t: t.update(header=[1])), "header")
    refused(rewrite(SMALL, lambda t: t.pop("sections")), "sections")
    refused(assemble([1, 2], b""), "bad section table")
    half = MAX_ELEMENTS // 2 + 1
    refused(assemble({"header": {}, "sections": [section("a", "bool", [half], "raw", b""),
                                                 section("b", "bool", [half], "raw", b"")]}, b""), "in all")


def test_bad_json_with_valid_crc_is_refused() -> None:
    bomb = b" " * (17 << 20)  # inflates past the 16 MiB table limit
    for text in (b"\xff\xfe", b"{", b"[" * 100_000 + b"]" * 100_000, b'{"header": NaN}', b"1" * 5000, bomb):
        raw = zlib.compress(text)
        refused(MAGIC + struct.pack("<HI", VERSION, len(raw)) + raw + struct.pack("<I", zlib.crc32(raw)))


def test_payloads_that_do_not_decode_are_refused() -> None:
    """Valid table and CRCs around payloads that lie about their contents."""
    def one(dtype, shape, coder, payload, match=None):
        refused(assemble({"header": {}, "sections": [section("s", dtype, shape, coder, payload)]}, payload), match)

    one("uint8", [10], "raw", b"\x00" * 11, "11 bytes where 10")
    one("bool", [3], "raw", b"\x01", "padding")
    one("uint8", [10], "zlib", zlib.compress(b"\x00" * 9), "gives 9 bytes")
    one("uint8", [10], "zlib", zlib.compress(b"\x00" * 10)[:-3], "ends early")
    one("uint8", [10], "zlib", zlib.compress(b"\x00" * 10) + b"xx", "after the end")
    one("uint8", [10], "zlib", b"not zlib at all", "invalid")
    one("uint8", [10], "lzma", b"\xff" * 20)
    one("int16", [4], "shuffle+lzma", lzma.compress(b"\x00" * 7, format=lzma.FORMAT_RAW,
                                                         filters=container._lzma_filters(7)), "gives 7 bytes")
    head = struct.Struct("<iII")
    counts = zlib.compress(bytes([2, 2]))
    one("int8", [4], "ans", head.pack(0, 2, len(counts)) + counts, "histogram")  # no words: all symbols 0
    one("int8", [4], "ans", head.pack(0, 2, len(counts)) + counts + b"\x05\x00\x00\x00" * 3, "left|histogram")
    one("int8", [4], "ans", head.pack(0, 2, len(counts)) + counts + b"\x00" * 4, "zero word")
    one("int8", [4], "ans", head.pack(0, 2, len(counts)) + counts + b"\x05\x00", "whole number")
    one("int8", [4], "ans", head.pack(120, 10, len(counts)) + counts, "does not fit")
    one("int8", [5], "ans", head.pack(0, 2, len(counts)) + counts, "sum to 4")
    one("int8", [4], "ans", head.pack(0, 3, len(counts)) + counts, "exactly 3")
    one("int8", [4], "ans", head.pack(0, 2, 99) + counts, "whole number")
    one("int8", [0], "ans", head.pack(0, 2, 0), "empty")
    one("int8", [4], "ans", b"\x00" * 5, "header")
    one("uint16", [4], "ans", head.pack(0, 70000, 0), "does not fit")


def test_decompression_bombs_are_cut_short() -> None:
    zbomb = zlib.compress(b"\x00" * 10**7, 9)
    lbomb = lzma.compress(b"\x00" * 10**7, format=lzma.FORMAT_RAW,
                          filters=[{"id": lzma.FILTER_LZMA2, "preset": 1, "dict_size": 4096}])
    for coder, payload in (("zlib", zbomb), ("lzma", lbomb)):
        table = {"header": {}, "sections": [section("s", "uint8", [100], coder, payload)]}
        refused(assemble(table, payload), "more than 100 bytes")


def test_section_sizes_checks_crcs() -> None:
    bad = bytearray(SMALL)
    bad[-1] ^= 1
    with pytest.raises(VqrfError, match="corrupt section 'zero_d' \\(CRC mismatch\\)"):
        section_sizes(bytes(bad), SRC)


# ---------------------------------------------------------------------------------------------------------------
# Property tests

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16)),
    st.tuples(st.just("splice"), st.integers(0, 2**16), st.integers(0, 2**16), st.integers(1, 64)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    """Apply flips, insertions, deletions, truncations and self-splices (positions taken modulo the length)."""
    buf = bytearray(data)
    for op in ops:
        at = op[1] % (len(buf) + 1)
        if op[0] == "flip" and at < len(buf):
            buf[at] ^= op[2]
        elif op[0] == "insert":
            buf[at:at] = op[2]
        elif op[0] == "delete":
            del buf[at:at + op[2]]
        elif op[0] == "truncate":
            del buf[at:]
        elif op[0] == "splice":
            src = op[2] % (len(buf) + 1)
            buf[at:at + op[3]] = buf[src:src + op[3]]
    return bytes(buf)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["name", "dtype", "shape", "coder", "length", "crc32"]


@settings(max_examples=200, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_random_byte_mutations_never_escape(ops: list[tuple]) -> None:
    decodes_or_refuses(mutate(SMALL, ops))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(FIELDS + ["<drop>", "<entry>"]), json_values),
                min_size=1, max_size=3))
def test_table_mutations_with_valid_crc_never_escape(edits: list[tuple]) -> None:
    table, payloads = split(SMALL)
    sections = table["sections"]
    for index, field, value in edits:
        i = index % len(sections)
        if field == "<drop>":
            sections.pop(i)
            if not sections:
                break
        elif field == "<entry>":
            sections[i] = value
        elif isinstance(sections[i], dict):
            sections[i][field] = value
    decodes_or_refuses(assemble(table, payloads))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 7), st.lists(mutation, min_size=1, max_size=3))
def test_payload_mutations_with_valid_crc_never_escape(index: int, ops: list[tuple]) -> None:
    """Garbage reaches the decoders themselves: the payload changes and its length and CRC follow."""
    table, payloads = split(SMALL)
    starts = np.cumsum([0] + [s["length"] for s in table["sections"]])
    parts = [payloads[a:b] for a, b in zip(starts[:-1], starts[1:])]
    parts[index] = mutate(parts[index], ops)
    table["sections"][index].update(length=len(parts[index]), crc32=zlib.crc32(parts[index]))
    decodes_or_refuses(assemble(table, b"".join(parts)))
