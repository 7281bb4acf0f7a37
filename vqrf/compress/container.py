"""The byte-level container of a ``.vqrf`` file: a JSON table plus named, individually coded numpy arrays.

Layout (all integers little-endian; docs/format.md, "Container layer", describes every byte)::

    MAGIC (8 B) | u16 version | u32 table length T | table (T B, zlib-deflated UTF-8 JSON) | u32 CRC32(table) | payloads

The table is ``{"header": <caller's dict>, "sections": [{"name", "dtype", "shape", "coder", "length",
"crc32"}, ...]}``; payloads follow back to back in table order, each exactly ``length`` bytes, nothing in
between and nothing after the last one. Each section's coder is the smallest of those tried.

Decoding trusts nothing: every failure is a ``VqrfError`` naming the file, memory is bounded by what the declared
shapes need (at most ``MAX_ELEMENTS`` elements in all), and every decompressor is bounded by the expected size.
"""

from __future__ import annotations

import json
import lzma
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import constriction
import numpy as np

from vqrf.errors import VqrfError

# PNG's trick: the high first byte catches 7-bit transfers, \r\n catches newline conversion either way, and \x1a
# (DOS end-of-file) stops `type` from printing the binary rest.
MAGIC = b"\x89VQRF\r\n\x1a"
VERSION = 1

# Declared elements summed over all sections; refusing more before allocating bounds a hostile file's memory use
# (2**28 float32 elements are 1 GiB; a real .vqrf holds a few million).
MAX_ELEMENTS = 2**28
MAX_NDIM = 32
MAX_TABLE = 16 << 20  # bytes of JSON table, inflated
# An ans alphabet is at most this many consecutive integers (constriction's 24-bit probabilities leave room).
MAX_ALPHABET = 65536

DTYPES = ("bool", "uint8", "int8", "int16", "uint16", "int32", "float16", "float32")
# Trial order; on equal sizes the earlier coder wins, so identical inputs always give identical files.
CODERS = ("raw", "zlib", "lzma", "shuffle+lzma", "ans")
_INTEGER = ("uint8", "int8", "int16", "uint16", "int32")
_FIXED = struct.Struct("<HI")  # version, table length
_ANS_HEAD = struct.Struct("<iII")  # min value, alphabet size K, length of the zlib'd counts block
_LZMA_MAX_DICT = 64 << 20  # liblzma's preset-9 dictionary


class _Entry(NamedTuple):
    """One validated row of the section table."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    coder: str
    length: int
    crc32: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)


class _Bad(Exception):
    """A table row or payload that fails a check; turned into a VqrfError naming the file and section."""


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def encode_container(header: dict, sections: dict[str, np.ndarray],
                     coders: dict[str, list[str]] | None = None) -> bytes:
    """Serialise ``header`` and the named arrays into the bytes of a ``.vqrf`` container.

    Args:
        header: JSON-serialisable dict stored verbatim (strict JSON: no NaN or infinity).
        sections: ordered name -> array of a dtype in ``DTYPES``, any shape (0-d and empty included).
        coders: optional name -> candidate coders; the smallest candidate is kept. Sections not named try every
            applicable coder.

    Raises:
        ValueError / TypeError: an unsupported dtype, an inapplicable coder, too many elements, bad header.
    """
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    coders = coders or {}
    unknown = set(coders) - set(sections)
    if unknown:
        raise ValueError(f"coders given for unknown sections {sorted(unknown)}")
    entries, payloads, total = [], [], 0
    for name, value in sections.items():
        if not isinstance(name, str):
            raise TypeError(f"section names must be str, got {name!r}")
        arr = np.asarray(value)
        if arr.dtype.name not in DTYPES:
            raise ValueError(f"section {name!r}: dtype {arr.dtype} not supported (one of {', '.join(DTYPES)})")
        if arr.ndim > MAX_NDIM or max(arr.shape, default=0) > MAX_ELEMENTS:
            raise ValueError(f"section {name!r}: shape {arr.shape} beyond the container's limits")
        total += arr.size
        if total > MAX_ELEMENTS:
            raise ValueError(f"more than {MAX_ELEMENTS} elements in all; the decoder would refuse the file")
        allowed = applicable_coders(arr)
        wanted = coders.get(name, allowed)
        bad = [c for c in wanted if c not in allowed]
        if not wanted or bad:
            raise ValueError(f"section {name!r} ({arr.dtype}): coders {list(wanted)} not all in {allowed}")
        coder, payload = _smallest(arr, [c for c in CODERS if c in wanted])
        entries.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "coder": coder,
                        "length": len(payload), "crc32": zlib.crc32(payload)})
        payloads.append(payload)
    text = json.dumps({"header": header, "sections": entries}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")
    if len(text) > MAX_TABLE:
        raise ValueError(f"section table larger than {MAX_TABLE} bytes")
    table = zlib.compress(text, 9)  # the table of ~80 sections is 10 KB of JSON, 2 KB deflated
    if len(table) >= 2**32:
        raise ValueError("section table larger than 4 GiB")
    return b"".join([MAGIC, _FIXED.pack(VERSION, len(table)), table, struct.pack("<I", zlib.crc32(table)), *payloads])


def applicable_coders(arr: np.ndarray) -> list[str]:
    """The coders that can store ``arr``, in trial order."""
    out = ["raw", "zlib", "lzma"]
    if arr.dtype.name != "bool" and arr.dtype.itemsize > 1:
        out.append("shuffle+lzma")
    if arr.dtype.name in _INTEGER and (arr.size == 0 or int(arr.max()) - int(arr.min()) < MAX_ALPHABET):
        out.append("ans")
    return out


def _smallest(arr: np.ndarray, candidates: list[str]) -> tuple[str, bytes]:
    """(coder, payload) of the shortest payload among ``candidates`` (first one on ties)."""
    raw = _raw_bytes(arr)
    best: tuple[str, bytes] | None = None
    for coder in candidates:
        if coder == "raw":
            payload = raw
        elif coder == "zlib":
            payload = zlib.compress(raw, 9)
        elif coder == "lzma":
            payload = _lzma_compress(raw)
        elif coder == "shuffle+lzma":
            payload = _lzma_compress(_shuffle(raw, arr.dtype.itemsize))
        else:
            payload = _ans_encode(arr)
        if best is None or len(payload) < len(best[1]):
            best = (coder, payload)
    assert best is not None
    return best


def _raw_bytes(arr: np.ndarray) -> bytes:
    """Little-endian element bytes in C order; bools as bits, MSB first, zero-padded to a whole byte."""
    if arr.dtype.name == "bool":
        return np.packbits(arr.reshape(-1), bitorder="big").tobytes()
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _shuffle(raw: bytes, itemsize: int) -> bytes:
    """Byte planes: byte 0 of every element, then byte 1, ... (exponents and high bytes end up together)."""
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


def _lzma_filters(raw_len: int) -> list[dict]:
    """Raw LZMA2, preset 9 | extreme, dictionary = the power of two >= ``raw_len``, clamped to [4 KiB, 64 MiB].

    The dictionary size is implied by the section's raw size, so it need not be stored, and a decoder never
    reserves more than the section needs (preset 9 alone would ask for 64 MiB per section).
    """
    dict_size = min(max(4096, 1 << max(raw_len - 1, 1).bit_length()), _LZMA_MAX_DICT)
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]


def _lzma_compress(raw: bytes) -> bytes:
    return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(raw)))


def _ans_model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The static model of an alphabet with these integer counts (K >= 2).

    The counts go to constriction as exact float64 integers, unnormalised: its quantiser then depends on the
    integers alone, so encoder and decoder build the same 24-bit table on any machine.
    """
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _ans_encode(arr: np.ndarray) -> bytes:
    """ans payload: <i32 min, u32 K, u32 C> | zlib(LEB128 counts) (C B) | u32 ANS words (none when K <= 1)."""
    flat = arr.reshape(-1).astype(np.int64)
    if flat.size == 0:
        return _ANS_HEAD.pack(0, 0, 0)
    lo = int(flat.min())
    symbols = (flat - lo).astype(np.int32)
    counts = np.bincount(symbols)
    table = zlib.compress(_leb128_encode(counts), 9)
    words = b""
    if counts.size > 1:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, _ans_model(counts))
        words = coder.get_compressed().astype("<u4").tobytes()
    return _ANS_HEAD.pack(lo, counts.size, len(table)) + table + words


def _leb128_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 (7 bits per byte, least significant group first, high bit = more follows); values < 2**35."""
    v = values.astype(np.uint64)
    shifts = np.arange(5, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)  # [K, 5]
    nbytes = 1 + (v[:, None] >= (np.uint64(1) << shifts[1:])).sum(axis=1)
    pos = np.arange(5)
    groups |= np.where(pos < nbytes[:, None] - 1, 0x80, 0).astype(np.uint8)
    return groups[pos < nbytes[:, None]].tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def decode_container(data: bytes, source: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse container bytes into (header, name -> array) with the dtypes, shapes and values that were encoded.

    Args:
        data: the whole file.
        source: the file's path, for error messages.

    Raises:
        VqrfError: anything wrong with ``data``, as one line naming ``source``.
    """
    header, entries, offsets = _read_table(data, source)
    arrays = {}
    for entry, start in zip(entries, offsets):
        try:
            arrays[entry.name] = _decode_payload(entry, data[start:start + entry.length])
        except _Bad as err:
            raise VqrfError(source, f"bad section {_quote(entry.name)} ({entry.coder}): {err}") from None
    return header, arrays


def section_sizes(data: bytes, source: str | Path) -> list[dict]:
    """Per section, in file order: name, coder, dtype, shape, bytes (payload) and raw_bytes (uncoded size).

    Checks the table and every CRC but decodes no payload. Raises ``VqrfError`` like ``decode_container``.
    """
    _, entries, _ = _read_table(data, source)
    return [{"name": e.name, "coder": e.coder, "dtype": e.dtype, "shape": e.shape, "bytes": e.length,
             "raw_bytes": _raw_size(e.dtype, e.count)} for e in entries]


def _read_table(data: bytes, source: str | Path) -> tuple[dict, list[_Entry], list[int]]:
    """(header, validated entries, payload offsets); checks magic, version, sizes and every CRC."""
    if len(data) == 0:
        raise VqrfError(source, "empty file, not a .vqrf file")
    head = bytes(data[:len(MAGIC)])
    if head != MAGIC[:len(head)]:
        if head.startswith(MAGIC[:5]):
            raise VqrfError(source, "not a .vqrf file (magic bytes altered; was it copied in text mode?)")
        raise VqrfError(source, "not a .vqrf file (wrong magic bytes)")
    fixed_end = len(MAGIC) + _FIXED.size
    if len(data) < fixed_end:
        raise VqrfError(source, f"truncated: {len(data)} bytes, shorter than the {fixed_end}-byte file header")
    version, table_len = _FIXED.unpack_from(data, len(MAGIC))
    if version > VERSION:
        raise VqrfError(source, f"written by a newer vqrf (container version {version}); upgrade vqrf")
    if version < 1:
        raise VqrfError(source, f"unsupported container version {version}")
    table_end = fixed_end + table_len
    if len(data) < table_end + 4:
        raise VqrfError(source, f"truncated: file ends inside the section table ({len(data)} of at least "
                                f"{table_end + 4} bytes)")
    table = bytes(data[fixed_end:table_end])
    if zlib.crc32(table) != struct.unpack_from("<I", data, table_end)[0]:
        raise VqrfError(source, "corrupt section table (CRC mismatch)")
    try:
        text = _inflate(zlib.decompressobj(), table, MAX_TABLE)
    except _Bad as err:
        raise VqrfError(source, f"bad section table: {err}") from None
    try:
        parsed = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VqrfError(source, f"bad section table: not UTF-8 JSON ({_first_line(err)})") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("header"), dict) \
            or not isinstance(parsed.get("sections"), list):
        raise VqrfError(source, "bad section table: expected an object with a 'header' object and a 'sections' list")

    entries, offsets, names = [], [], set()
    offset, total = table_end + 4, 0
    for i, raw_entry in enumerate(parsed["sections"]):
        try:
            entry = _parse_entry(raw_entry)
        except _Bad as err:
            raise VqrfError(source, f"bad section table: section {i}: {err}") from None
        if entry.name in names:
            raise VqrfError(source, f"bad section table: section name {_quote(entry.name)} repeated")
        names.add(entry.name)
        total += entry.count
        if total > MAX_ELEMENTS:
            raise VqrfError(source, f"bad section table: more than {MAX_ELEMENTS} elements declared in all")
        entries.append(entry)
        offsets.append(offset)
        offset += entry.length
    if offset > len(data):
        missing = next(e for e, o in zip(entries, offsets) if o + e.length > len(data))
        raise VqrfError(source, f"truncated: file ends inside section {_quote(missing.name)} ({len(data)} of "
                                f"{offset} bytes)")
    if offset < len(data):
        extra = len(data) - offset
        raise VqrfError(source, f"{extra} unexpected byte{'s' * (extra > 1)} after the last section")
    # Checked before any payload is decoded: a flipped bit is reported as corruption, not as a decoding puzzle.
    for entry, start in zip(entries, offsets):
        if zlib.crc32(data[start:start + entry.length]) != entry.crc32:
            raise VqrfError(source, f"corrupt section {_quote(entry.name)} (CRC mismatch)")
    return parsed["header"], entries, offsets


def _parse_entry(raw: object) -> _Entry:
    """Validate one table row; raises _Bad saying which field is wrong."""
    if not isinstance(raw, dict):
        raise _Bad("not an object")
    name, dtype, shape, coder = raw.get("name"), raw.get("dtype"), raw.get("shape"), raw.get("coder")
    if not isinstance(name, str):
        raise _Bad("name is not a string")
    if dtype not in DTYPES:
        raise _Bad(f"unknown dtype {_quote(dtype)}")
    if coder not in CODERS:
        raise _Bad(f"unknown coder {_quote(coder)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise _Bad(f"shape must be a list of at most {MAX_NDIM} non-negative integers")
    if max(shape, default=0) > MAX_ELEMENTS or math.prod(shape) > MAX_ELEMENTS:
        raise _Bad(f"shape {_quote(shape)} has more than {MAX_ELEMENTS} elements")
    length, crc = raw.get("length"), raw.get("crc32")
    if not _is_int(length) or length < 0:
        raise _Bad("length must be a non-negative integer")
    if not _is_int(crc) or not 0 <= crc < 2**32:
        raise _Bad("crc32 must be an integer in [0, 2**32)")
    if coder == "shuffle+lzma" and (dtype == "bool" or np.dtype(dtype).itemsize == 1):
        raise _Bad(f"coder shuffle+lzma does not apply to {dtype}")
    if coder == "ans" and dtype not in _INTEGER:
        raise _Bad(f"coder ans does not apply to {dtype}")
    return _Entry(name, dtype, tuple(shape), coder, length, crc)


def _decode_payload(entry: _Entry, payload: bytes) -> np.ndarray:
    """The section's array, shape ``entry.shape``; raises _Bad if the payload does not yield exactly that."""
    n, dtype = entry.count, np.dtype(entry.dtype)
    if entry.coder == "ans":
        return _ans_decode(payload, dtype, n).reshape(entry.shape)
    size = _raw_size(entry.dtype, n)
    if entry.coder == "raw":
        if len(payload) != size:
            raise _Bad(f"{len(payload)} bytes where {size} are needed")
        raw = payload
    elif entry.coder == "zlib":
        raw = _inflate_exact(zlib.decompressobj(), payload, size)
    else:
        raw = _inflate_exact(lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma_filters(size)), payload, size)
        if entry.coder == "shuffle+lzma":
            raw = np.frombuffer(raw, np.uint8).reshape(dtype.itemsize, -1).T.tobytes()
    if entry.dtype == "bool":
        bits = np.frombuffer(raw, np.uint8)
        if n % 8 and bits[-1] & (0xFF >> (n % 8)):
            raise _Bad("padding bits after the last bool are not zero")
        return np.unpackbits(bits, count=n, bitorder="big").astype(bool).reshape(entry.shape)
    # astype copies into a writable, native-order array.
    return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(entry.shape)


def _inflate(decompressor, payload: bytes, limit: int) -> bytes:
    """The whole output of a zlib / raw-LZMA2 stream that must end within ``payload`` and give at most ``limit``
    bytes; never produces more than limit + 1 bytes, whatever the stream claims."""
    try:
        # zlib reads max_length=0 as "unlimited", hence the +1, which also detects a stream that is too long.
        out = decompressor.decompress(payload, limit + 1)
    except (zlib.error, lzma.LZMAError) as err:
        raise _Bad(f"compressed stream is invalid ({_first_line(err)})") from None
    if len(out) > limit:
        raise _Bad(f"compressed stream gives more than {limit} bytes")
    if not decompressor.eof:
        raise _Bad("compressed stream ends early")
    if decompressor.unused_data:
        raise _Bad(f"{len(decompressor.unused_data)} bytes after the end of the compressed stream")
    return out


def _inflate_exact(decompressor, payload: bytes, size: int) -> bytes:
    out = _inflate(decompressor, payload, size)
    if len(out) != size:
        raise _Bad(f"compressed stream gives {len(out)} bytes where {size} are needed")
    return out


def _ans_decode(payload: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    """Flat [n] array of ``dtype`` from an ans payload (layout in ``_ans_encode``)."""
    if len(payload) < _ANS_HEAD.size:
        raise _Bad(f"{len(payload)} bytes, shorter than the {_ANS_HEAD.size}-byte ans header")
    lo, k, table_len = _ANS_HEAD.unpack_from(payload)
    if k == 0 or n == 0:
        if (k, n, lo, len(payload)) != (0, 0, 0, _ANS_HEAD.size):
            raise _Bad("an empty alphabet must code an empty array with a bare header")
        return np.zeros(0, dtype)
    info = np.iinfo(dtype)
    if k > MAX_ALPHABET or lo < info.min or lo + k - 1 > info.max:
        raise _Bad(f"alphabet [{lo}, {lo + k - 1}] does not fit {dtype}")
    words_at = _ANS_HEAD.size + table_len
    if words_at > len(payload) or (len(payload) - words_at) % 4:
        raise _Bad("counts block length does not leave a whole number of 32-bit words")
    counts = _leb128_decode(_inflate(zlib.decompressobj(), payload[_ANS_HEAD.size:words_at], 5 * k), k)
    if int(counts.sum()) != n:
        raise _Bad(f"histogram counts sum to {int(counts.sum())}, not the {n} elements declared")
    words = np.frombuffer(payload, "<u4", offset=words_at).astype(np.uint32)
    if k == 1:
        if words.size:
            raise _Bad("a one-symbol alphabet carries no ANS words")
        return np.full(n, lo, dtype)
    if words.size and words[-1] == 0:
        raise _Bad("ANS stream ends in a zero word")
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_ans_model(counts), n)
        leftover = not coder.is_empty()
    except Exception as err:  # constriction reports bad input with assorted types; all mean a corrupt payload
        raise _Bad(f"ANS stream does not decode ({_first_line(err)})") from None
    if leftover:
        raise _Bad("ANS stream has data left after the last symbol")
    # A forged stream can decode to the right number of symbols; the histogram it was coded with cannot lie too.
    if not np.array_equal(np.bincount(symbols, minlength=k), counts):
        raise _Bad("decoded symbols do not match the stored histogram")
    # In place: lo + s <= the dtype's maximum fits int32, and no int64 copy quadruples an int8 section's memory.
    symbols += np.int32(lo)
    return symbols.astype(dtype)


def _leb128_decode(block: bytes, k: int) -> np.ndarray:
    """[k] uint64 values from exactly k unsigned LEB128 numbers of at most 5 bytes each."""
    b = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if ends.size != k or ends[-1] != b.size - 1:
        raise _Bad(f"histogram block does not hold exactly {k} LEB128 counts")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise _Bad("histogram count longer than 5 bytes")
    pos = np.arange(b.size) - np.repeat(starts, lengths)
    return np.add.reduceat((b & 0x7F).astype(np.uint64) << (np.uint64(7) * pos.astype(np.uint64)), starts)


def _raw_size(dtype: str, n: int) -> int:
    """Bytes of the raw coding of n elements."""
    return (n + 7) // 8 if dtype == "bool" else n * np.dtype(dtype).itemsize


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true must not pass as 1


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _quote(value: object) -> str:
    """A short, single-line rendering of a value from the file for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:120]
