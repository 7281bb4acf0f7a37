"""What the browser-decodable writer costs in bytes: a real .vqrf re-encoded with the writer's coders, and with the
coder sets a browser could decode with less code of its own.

    python benchmarks/coder_cost.py [--file benchmarks/out/lego_cpu_dvgo_compress/lego.vqrf]

The browser player decodes every coder the writer emits (vqrf/web/container.js: zlib through the browser's own
DecompressionStream, raw LZMA2 and constriction's rANS in JavaScript), so the writer was left unchanged and its cost
is 0 bytes. This script measures what the alternatives would have cost: dropping LZMA (raw, zlib, ans) or keeping
only what a browser inflates natively (raw, zlib). Each variant re-encodes the file's own decoded sections with
``encode_container``; the writer's row must reproduce the file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from common import ROOT, add_doc_row, write_result

from vqrf.compress.container import CODERS, applicable_coders, decode_container, encode_container, section_sizes

VARIANTS = {
    "writer (raw, zlib, lzma, shuffle+lzma, ans)": CODERS,
    "no LZMA (raw, zlib, ans)": ("raw", "zlib", "ans"),
    "browser-native only (raw, zlib)": ("raw", "zlib"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default="benchmarks/out/lego_cpu_dvgo_compress/lego.vqrf",
                        help="a .vqrf written by `vqrf compress` (default: the lego-cpu DVGO file)")
    parser.add_argument("--name", default="coder_cost", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    path = Path(args.file) if Path(args.file).is_absolute() else ROOT / args.file
    if not path.is_file():
        raise SystemExit(f"coder_cost: {path} not found (run benchmarks/lego_cpu_compress.py or pass --file)")
    data = path.read_bytes()
    header, arrays = decode_container(data, path)

    variants = {}
    for label, allowed in VARIANTS.items():
        coders = {name: [c for c in applicable_coders(a) if c in allowed] for name, a in arrays.items()}
        start = time.perf_counter()
        encoded = encode_container(header, arrays, coders)
        seconds = time.perf_counter() - start
        used = Counter()
        for s in section_sizes(encoded, label):
            used[s["coder"]] += s["bytes"]
        variants[label] = {"bytes": len(encoded), "extra_bytes": len(encoded) - len(data),
                           "extra_percent": round(100 * (len(encoded) - len(data)) / len(data), 2),
                           "payload_bytes_by_coder": dict(used), "encode_s": round(seconds, 2)}
        if allowed == CODERS and encoded != data:
            raise SystemExit("coder_cost: re-encoding with the writer's coders does not reproduce the file")

    result = {"file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "file_bytes": len(data),
              "sections": len(arrays), "variants": variants}
    out = write_result(args.name, result)
    cells = " | ".join(f"{v['bytes']:,} ({v['extra_percent']:+.2f}%)" for v in variants.values())
    add_doc_row(
        "Container coders in the browser: byte cost",
        "| date | command | file | " + " | ".join(VARIANTS) + " |\n|" + " --- |" * (3 + len(VARIANTS)),
        f"| {time.strftime('%Y-%m-%d')} | `{out.name}`: `python benchmarks/coder_cost.py"
        f"{'' if args.file == parser.get_default('file') else ' --file ' + args.file}` | {result['file']} | {cells} |",
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
