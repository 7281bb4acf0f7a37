"""Decode randomly mutated copies of a realistic .vqrf container: each must decode or raise VqrfError, nothing else.

Writes ``benchmarks/results/fuzz_container.json`` and a row in docs/benchmarks.md; exits 1 if any decode raised
another exception.

    python benchmarks/fuzz_container.py [--n 10000] [--seed 0]

The container holds two 160x160 bool occupancy masks (a ball and a slab), 60,000 int16 codebook indices with a
skewed 512-symbol distribution, a float16 codebook (512x12) and float16 features (3000x12), and int8 quantised
features (4000x12); every coder appears. Each copy gets one of three mutation kinds, in equal shares:
"bytes" (1-4 flips, insertions, deletions, truncations or self-splices anywhere in the file), "table" (1-3 edits of
section-table fields with odd JSON values, dropped/duplicated rows, the table CRC recomputed so the edits reach the
validator) and "payload" (byte mutations inside one payload with its length and CRC recomputed, so garbage reaches
the decompressors and the ANS decoder). Times are wall-clock per decode_container call, single-threaded.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import time
import zlib
from collections import Counter

import numpy as np

from common import add_doc_row, peak_rss_mb, write_result
from vqrf.compress.container import MAGIC, VERSION, decode_container, encode_container, section_sizes
from vqrf.errors import VqrfError

TABLE_AT = len(MAGIC) + 6
ODD_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**32, 2**70, 0.5, -1e300, "", "int16", "float64", "ans",
              "brotli", [], [0], [-1], [2**28 + 1], [2**14, 2**14, 2], [1] * 40, ["3"], {}, {"a": 1}, "x" * 300]
FIELDS = ["name", "dtype", "shape", "coder", "length", "crc32"]


def realistic_sections(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """(sections, forced coders) shaped like a compressed TensoRF-VM field."""
    yy, xx = np.mgrid[-1:1:160j, -1:1:160j]
    p = 1.0 / np.arange(1, 513) ** 1.2
    sections = {
        "mask.ball": xx**2 + yy**2 < 0.6,
        "mask.slab": (np.abs(yy) < 0.3) & (rng.random((160, 160)) < 0.9),
        "vq.indices": rng.choice(512, 60_000, p=p / p.sum()).astype(np.int16),
        "vq.codebook": (rng.standard_normal((512, 12)) * 0.2).astype(np.float16),
        "keep.features": (rng.standard_normal((3000, 12)) * 0.1).astype(np.float16),
        "keep.quantised": np.clip(rng.normal(0, 20, (4000, 12)), -127, 127).astype(np.int8),
        "scale": np.array([0.0123, 4.5], np.float32),
    }
    # Force the coders the automatic choice would not reach, so every decoder gets fuzzed.
    return sections, {"mask.slab": ["zlib"], "keep.quantised": ["ans"], "scale": ["raw"]}


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    return json.loads(zlib.decompress(data[TABLE_AT:TABLE_AT + n])), data[TABLE_AT + n + 4:]


def assemble(table: object, payloads: bytes) -> bytes:
    raw = zlib.compress(json.dumps(table).encode())
    return MAGIC + struct.pack("<HI", VERSION, len(raw)) + raw + struct.pack("<I", zlib.crc32(raw)) + payloads


def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """1-4 random flips, insertions, deletions, truncations or splices (a copy of another stretch of the file)."""
    buf = bytearray(data)
    for _ in range(rng.integers(1, 5)):
        kind = rng.choice(["flip", "insert", "delete", "truncate", "splice"])
        at = int(rng.integers(0, len(buf) + 1))
        if kind == "flip" and at < len(buf):
            buf[at] ^= int(rng.integers(1, 256))
        elif kind == "insert":
            buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif kind == "delete":
            del buf[at:at + int(rng.integers(1, 17))]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "splice":
            src, size = int(rng.integers(0, len(buf) + 1)), int(rng.integers(1, 65))
            buf[at:at + size] = buf[src:src + size]
    return bytes(buf)


def mutate_table(data: bytes, rng: np.random.Generator) -> bytes:
    """1-3 edits of the section table, then a correct table CRC."""
    table, payloads = split(data)
    rows = table["sections"]
    for _ in range(rng.integers(1, 4)):
        i = int(rng.integers(0, len(rows)))
        kind = rng.choice(["field", "field", "drop_field", "drop_row", "dup_row", "swap"])
        if kind == "field":
            rows[i][str(rng.choice(FIELDS))] = ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))]
        elif kind == "drop_field":
            rows[i].pop(str(rng.choice(FIELDS)), None)
        elif kind == "drop_row" and len(rows) > 1:
            rows.pop(i)
        elif kind == "dup_row":
            rows.insert(i, dict(rows[i]))
        elif kind == "swap":
            j = int(rng.integers(0, len(rows)))
            rows[i], rows[j] = rows[j], rows[i]
    return assemble(table, payloads)


def mutate_payload(data: bytes, rng: np.random.Generator) -> bytes:
    """Byte mutations inside one payload, whose length and CRC are then recomputed."""
    table, payloads = split(data)
    rows = table["sections"]
    starts = np.cumsum([0] + [r["length"] for r in rows])
    parts = [payloads[a:b] for a, b in zip(starts[:-1], starts[1:])]
    i = int(rng.integers(0, len(parts)))
    parts[i] = mutate_bytes(parts[i], rng)
    rows[i].update(length=len(parts[i]), crc32=zlib.crc32(parts[i]))
    return assemble(table, b"".join(parts))


MUTATIONS = {"bytes": mutate_bytes, "table": mutate_table, "payload": mutate_payload}


def kind_of(problem: str) -> str:
    """The message without names, values, numbers and closing details in parentheses, to count errors by kind."""
    text = re.sub(r"(unknown (?:dtype|coder)) .*", r"\1 <value>", problem)
    text = re.sub(r"'[^']*'", "<name>", text)
    text = re.sub(r"\s*\([^()]*\)$", "", text)
    text = re.sub(r"\bbyte\b", "bytes", text)
    return re.sub(r"\b\d+\b", "N", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="mutated copies to decode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--file", default=None,
                    help="fuzz this real .vqrf through the whole field decoder (decode_field) instead of a "
                         "synthetic container through decode_container")
    ap.add_argument("--name", default="fuzz_container")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    if args.file:
        from vqrf.compress.codec import decode_field

        data, decode = open(args.file, "rb").read(), decode_field
    else:
        sections, coders = realistic_sections(rng)
        data = encode_container({"config": {"grid": [160, 160, 160], "codebook": 512}}, sections, coders)
        decode = decode_container
    start = time.perf_counter()
    decode(data, "clean.vqrf")
    clean_ms = 1e3 * (time.perf_counter() - start)

    outcomes: Counter[str] = Counter()
    errors: dict[str, Counter[str]] = {m: Counter() for m in MUTATIONS}
    failures: list[dict] = []
    times = np.zeros(args.n)
    modes = list(MUTATIONS)
    for i in range(args.n):
        mode = modes[i % len(modes)]
        bad = MUTATIONS[mode](data, rng)
        start = time.perf_counter()
        try:
            decode(bad, "fuzz.vqrf")
            outcomes[f"{mode}: decoded"] += 1
        except VqrfError as err:
            outcomes[f"{mode}: VqrfError"] += 1
            errors[mode][kind_of(err.problem)] += 1
        except Exception as err:  # the point of the run: anything else is a bug
            outcomes[f"{mode}: other exception"] += 1
            if len(failures) < 20:
                failures.append({"copy": i, "mode": mode, "type": type(err).__name__, "message": str(err)[:300]})
        times[i] = time.perf_counter() - start

    n_fail = sum(v for k, v in outcomes.items() if k.endswith("other exception"))
    n_ok = sum(v for k, v in outcomes.items() if k.endswith("decoded"))
    result = {
        "n": args.n, "seed": args.seed, "file": args.file, "decoder": decode.__name__, "container_bytes": len(data),
        "sections": section_sizes(data, "clean.vqrf"),
        "clean_decode_ms": round(clean_ms, 2),
        "outcomes": dict(sorted(outcomes.items())),
        "vqrf_errors_by_kind": {m: dict(c.most_common()) for m, c in errors.items()},
        "failures": n_fail, "failure_examples": failures,
        "decode_ms": {"mean": round(1e3 * times.mean(), 3), "p99": round(1e3 * np.quantile(times, 0.99), 3),
                      "max": round(1e3 * times.max(), 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    path = write_result(args.name, result)
    add_doc_row(
        "Container fuzzing (decoding mutated .vqrf bytes)",
        "| date | command | decoder | container bytes | copies | decoded | VqrfError | other exceptions | ms/decode mean / max | peak MB |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | `{path.name}`: `python benchmarks/fuzz_container.py --n {args.n} "
        f"--seed {args.seed}{' --file ' + args.file if args.file else ''}"
        f"{' --name ' + args.name if args.name != 'fuzz_container' else ''}` | {decode.__name__} | {len(data):,} | {args.n:,} | {n_ok:,} | {args.n - n_ok - n_fail:,} | {n_fail} | "
        f"{result['decode_ms']['mean']:.2f} / {result['decode_ms']['max']:.1f} | {result['peak_rss_mb']:.0f} |",
    )
    print(json.dumps({k: v for k, v in result.items() if k != "sections"}, indent=2))
    if n_fail:
        sys.exit(1)


if __name__ == "__main__":
    main()
