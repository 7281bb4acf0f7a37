"""Shared bits of the benchmark scripts: machine description, result files, the docs table."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import sys
from pathlib import Path

import vqrf  # noqa: F401  (its environment settings must precede torch)
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


def data_root() -> Path:
    root = os.environ.get("VQRF_DATA") or str(ROOT.parent / "shared" / "data")
    if not Path(root).is_dir():
        sys.exit(f"benchmark: data folder {root} not found; set VQRF_DATA")
    os.environ.setdefault("VQRF_DATA", root)  # LPIPS finds its weights there
    return Path(root)


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    full = {"date": datetime.date.today().isoformat(), "machine": machine(), "command": command(), **result}
    path.write_text(json.dumps(full, indent=2) + "\n")
    return path


def add_doc_row(section: str, header: str, row: str) -> None:
    """Append ``row`` to the table under ``## section`` in docs/benchmarks.md (creating both if needed)."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nEvery number here is written by a script in `benchmarks/`; its JSON is in `benchmarks/results/`.\n"
    marker = f"## {section}\n"
    if marker not in text:
        text = text.rstrip("\n") + f"\n\n{marker}\n{header}\n"
    head, tail = text.split(marker, 1)
    table_end = tail.find("\n\n", tail.find(header) + len(header)) if header in tail else -1
    if table_end == -1:
        tail = tail.rstrip("\n") + "\n" + row + "\n"
    else:
        tail = tail[:table_end] + "\n" + row + tail[table_end:]
    DOCS.write_text(head + marker + tail)


def kernel_run_info(load_before: tuple[float, float, float], doc: str) -> dict:
    """What a kernel benchmark records beside its timings: numba's version and threading layer, the load average
    before and after (other work on the machine skews timings), and the script's notes (its docstring's third part)."""
    import numba

    return {
        "numba": numba.__version__,
        "numba_threading_layer": numba.threading_layer(),
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in os.getloadavg()]},
        "notes": doc.split("\n\n", 2)[2].strip(),
    }
