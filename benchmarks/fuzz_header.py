"""Decode and render .vqrf files with mutated headers: each must render a finite image or raise VqrfError, in time.

Writes ``benchmarks/results/<name>.json`` and a row in docs/benchmarks.md; exits 1 if any copy raised another
exception, hung or rendered a non-finite image.

    python benchmarks/fuzz_header.py [--n 10000] [--seed 0] [--file X.vqrf ...] [--timeout 30] [--workers 1]

Each copy changes 1-3 values anywhere in the header of one base file: top-level keys, the scene, the preset's
architecture, schedule and coarse stage, precision and stats. A value is replaced by one of another type or an extreme
one (null, booleans, strings, lists, objects, 0, negatives, 2^70, 1e308, and 1e999, which JSON readers take as
infinity), a number is scaled or nudged, a key deleted or added, or a list shortened or lengthened. The container is
rebuilt around the base file's payloads with a new table CRC, so every copy reaches the field layer. A worker process
decodes each copy (decode_field) and renders an 8x8 view of it through render_image, as render_frame does; a copy
that takes longer than --timeout seconds is a hang (the worker is killed and replaced). Times are per copy, decode and
render together, in the worker.

Base files: four small random fields built here (TensoRF in a bounded, an NDC and a contracted scene, the first two
with stored training cameras; DVGO with a coarse stage in its preset), so every scene kind, field type and header
entry is reached, plus any --file.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import re
import struct
import sys
import time
import zlib
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import add_doc_row, peak_rss_mb, write_result
from fuzz_container import split
from vqrf.checkpoint import SceneInfo
from vqrf.compress.codec import Precision, decode_field, encode_field
from vqrf.compress.container import MAGIC, VERSION
from vqrf.compress.vq import build_vq
from vqrf.config import DVGOConfig, FieldConfig, Preset, TrainConfig
from vqrf.data.scene import CONTRACTED_AABB, Cameras, CameraSet
from vqrf.errors import VqrfError
from vqrf.fields import create_field
from vqrf.render.occupancy import OccupancyGrid
from vqrf.render.paths import look_at
from vqrf.render.rays import camera_rays, ndc_rays
from vqrf.render.volume import render_image

SIZE = 8
"""Pixels per side of the rendered view."""
INFINITE = 7.77e307
"""Written as 1e999 in the table: JSON's way to smuggle an infinity past a writer that refuses one."""
ODD_VALUES = [None, True, False, 0, 1, -1, 2, 3, 7, 0.5, -0.5, 1e-9, -1e-9, 1e9, -1e9, 2**31, 2**53 + 1, 2**70, -2**70,
              1e308, -1e308, INFINITE, -INFINITE, "", "0", "1.5", "relu", "tensorf", "dvgo", "vqrf-field-vq", "x" * 300,
              [], [0], [1, 2], [0, 0, 0], [2, 2, 2], [4096, 4096, 4096], [1.5, 2.5, 3.5], [[0, 0, 0], [1, 1, 1]],
              [[1, 1, 1], [0, 0, 0]], ["a"], [None], [[]], {}, {"a": 1}, {"keep": "x"}]
FACTORS = [0.0, -1.0, 0.5, 2.0, 10.0, 1e-3, 1e3, 1e6, 1e-6]


def stored_views(ndc: bool) -> CameraSet:
    """Three training cameras for a file to store (field version 3), so that header entry is mutated too."""
    up = torch.tensor([0.0, 1.0, 0.0] if ndc else [0.0, 0.0, 1.0])
    poses = [torch.cat([torch.eye(3), torch.tensor([[0.1 * k], [0.0], [0.0]])], dim=1) if ndc else
             look_at(torch.tensor([4 * math.cos(k), 4 * math.sin(k), 1.0]), torch.zeros(3), up) for k in range(3)]
    one = torch.ones(3)
    return CameraSet(Cameras(torch.stack(poses), 30 * one, 30 * one, 16 * one, 12 * one, 32, 24), up, ndc,
                     (1.0, 10.0) if ndc else None)


def small_files() -> dict[str, bytes]:
    """.vqrf bytes of four tiny random fields: one per field type and scene kind."""
    torch.manual_seed(0)
    box = torch.tensor([[-1.0, -1.2, -0.9], [1.1, 1.0, 1.2]])
    # Densities high enough that every view composites several samples (a random grid is otherwise nearly empty).
    tensorf = FieldConfig(density_comps=(2, 3, 2), app_comps=(3, 2, 4), app_dim=6, mlp_width=16, density_shift=0.0)
    coarse = Preset("small-coarse", "blender", field=DVGOConfig(k0_dim=3, rgbnet=False),
                    train=TrainConfig(iters=10, upsample_at=(), alpha_mask_at=()))
    kinds = {
        "tensorf": (tensorf, box, SceneInfo(2.0, 6.0, False, True, height=24, width=32, views=stored_views(False)),
                    None),
        "tensorf-ndc": (FieldConfig(density_comps=(2, 1, 1), app_comps=(3, 2, 2), app_dim=5, mlp_width=16, view_pe=0,
                                    fea_pe=0, density_act="relu"),
                        torch.tensor([[-1.5, -1.7, -1.0], [1.5, 1.7, 1.0]]),
                        SceneInfo(0.0, 1.0, True, False, ndc_focal=30.0, height=24, width=32,
                                  views=stored_views(True)), None),
        "tensorf-contracted": (tensorf, 0.9 * torch.tensor(CONTRACTED_AABB),
                               SceneInfo(0.1, 1e4, False, False, height=24, width=32, contract=True), None),
        "dvgo": (DVGOConfig(k0_dim=4, rgbnet_width=16, view_pe=2, alpha_init=0.2), box,
                 SceneInfo(2.0, 6.0, False, True), coarse),
    }
    files = {}
    for name, (cfg, aabb, scene, coarse_stage) in kinds.items():
        field = create_field(cfg, aabb, [10, 9, 8])
        with torch.no_grad():
            for p in field.parameters():
                p.normal_(0.0, 0.5)
        maps = [torch.rand(g.shape, dtype=torch.float64) for g in field.feature_grids()]
        state = build_vq(field, maps, 0.5, 0.99, lambda n: 8, progress=False)
        state.apply(field)
        occupancy = OccupancyGrid((torch.rand(9, 8, 7) < 0.6).to(torch.uint8), aabb)
        preset = Preset("small", "blender", field=cfg, train=TrainConfig(weight_thres=1e-3), coarse=coarse_stage)
        files[name] = encode_field(field, state, occupancy, preset, scene, Precision("int8", "int8", "fp16"),
                                   {"tiers": state.counts(), "psnr": 20.0})
    return files


# ---- mutation -----------------------------------------------------------------------------------------------------
def header_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (object keys and list indices), parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(header_paths(value, (*prefix, key)))
    return out


def mutate_header(header: dict, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """A deep copy of ``header`` with 1-3 random edits, and a description of each."""
    header = json.loads(json.dumps(header))
    edits = []
    for _ in range(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))):
        paths = header_paths(header)
        if not paths:
            break
        path = paths[int(rng.integers(len(paths)))]
        parent = header
        for key in path[:-1]:
            parent = parent[key]
        key, value = path[-1], parent[path[-1]]
        where = ".".join(map(str, path))
        action = rng.choice(["replace", "nudge", "delete", "grow"], p=[0.5, 0.25, 0.15, 0.1])
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if action == "nudge" and number:
            new = value + int(rng.choice([-1, 1])) if rng.random() < 0.3 else value * float(rng.choice(FACTORS))
            if isinstance(value, int) and abs(new) < 2**62:
                new = int(new)
            parent[key] = new
            edits.append(f"{where} = {json.dumps(new)}")
        elif action == "delete":
            parent.pop(key)
            edits.append(f"del {where}")
        elif action == "grow" and isinstance(value, (list, dict)):
            if isinstance(value, list):
                value.append(value[-1] if value else 0)
            else:
                value["unknown_key"] = 1
            edits.append(f"grow {where}")
        else:
            new = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
            parent[key] = json.loads(json.dumps(new))
            edits.append(f"{where} = {json.dumps(new)[:40]}")
    return header, edits


def with_header(data: bytes, header: dict) -> bytes:
    """``data`` with its header replaced (payloads, their lengths and CRCs untouched; the table CRC recomputed)."""
    table, payloads = split(data)
    text = json.dumps({**table, "header": header}).replace(repr(INFINITE), "1e999")
    raw = zlib.compress(text.encode())
    return MAGIC + struct.pack("<HI", VERSION, len(raw)) + raw + struct.pack("<I", zlib.crc32(raw)) + payloads


# ---- decoding and rendering ---------------------------------------------------------------------------------------
def view_rays(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of a SIZE x SIZE view that sees the field: from outside the box (bounded), from inside the inner cube
    (contracted) or from the origin looking down -z (NDC, warped with the file's focal length and image size)."""
    scene, box = model.scene, model.field.aabb
    up = torch.tensor([0.0, 0.0, 1.0])
    if scene.ndc:
        c2w, focal = torch.eye(3, 4), scene.ndc_focal * SIZE / scene.width
    elif scene.contract:
        c2w, focal = look_at(torch.tensor([0.3, -0.6, 0.2]), torch.zeros(3), up), SIZE
    else:
        centre, extent = box.mean(0), float((box[1] - box[0]).norm())
        direction = torch.tensor([0.6, -0.7, 0.4]) / torch.tensor([0.6, -0.7, 0.4]).norm()
        c2w, focal = look_at(centre + (scene.near + 0.6 * extent) * direction, centre, up), SIZE
    one = torch.ones(1)
    cameras = Cameras(c2w[None], focal * one, focal * one, SIZE / 2 * one, SIZE / 2 * one, SIZE, SIZE)
    origins, directions = camera_rays(cameras, 0)
    if scene.ndc:
        origins, directions = ndc_rays(origins, directions, scene.height, scene.width, scene.ndc_focal)
    return origins, directions


def check_file(data: bytes) -> tuple[str, str]:
    """Decode and render one file: ('rendered' | 'VqrfError' | 'exception' | 'non-finite', detail)."""
    try:
        model = decode_field(data, "fuzz.vqrf")
        out = render_image(model.field, model.occupancy, *view_rays(model), model.render_settings())
    except VqrfError as err:
        if err.path != "fuzz.vqrf" or "\n" in err.problem:
            return "exception", f"VqrfError not one line naming the file: {err}"
        return "VqrfError", err.problem
    except Exception as err:  # the point of the run: anything else is a bug
        return "exception", f"{type(err).__name__}: {str(err)[:300]}"
    if not all(bool(torch.isfinite(out[k]).all()) for k in ("rgb", "depth", "acc")):
        return "non-finite", ", ".join(k for k in ("rgb", "depth", "acc") if not torch.isfinite(out[k]).all())
    return "rendered", ""


def worker(conn: Connection, warmup: bytes) -> None:
    """Check the files sent down ``conn``, answering (outcome, detail, seconds); None ends the loop."""
    torch.set_num_threads(1)
    check_file(warmup)  # numba's cached kernels load on the first render: not part of any copy's time
    conn.send("ready")
    while (data := conn.recv()) is not None:
        start = time.perf_counter()
        outcome, detail = check_file(data)
        conn.send((outcome, detail, time.perf_counter() - start))


class Workers:
    """Worker processes fed one file at a time; one that overruns its deadline is killed and replaced."""

    def __init__(self, n: int, warmup: bytes, timeout: float):
        self.ctx, self.warmup, self.timeout = mp.get_context("spawn"), warmup, timeout
        self.idle: list[tuple[Any, Connection]] = [self._start() for _ in range(n)]
        self.busy: dict[Connection, tuple[Any, float, Any]] = {}  # conn -> (process, deadline, tag)

    def _start(self) -> tuple[Any, Connection]:
        here, there = self.ctx.Pipe()
        process = self.ctx.Process(target=worker, args=(there, self.warmup), daemon=True)
        process.start()
        if not here.poll(300) or here.recv() != "ready":
            raise RuntimeError("a fuzz worker did not start")
        return process, here

    def submit(self, data: bytes, tag: Any) -> None:
        process, conn = self.idle.pop()
        conn.send(data)
        self.busy[conn] = (process, time.monotonic() + self.timeout, tag)

    def collect(self) -> list[tuple[Any, str, str, float]]:
        """Wait for at least one result: (tag, outcome, detail, seconds); a hang is ('hang', '', timeout)."""
        deadline = min(d for _, d, _ in self.busy.values())
        ready = wait(list(self.busy), timeout=max(0.0, deadline - time.monotonic()))
        results = []
        for conn in ready:
            process, _, tag = self.busy.pop(conn)
            results.append((tag, *conn.recv()))
            self.idle.append((process, conn))
        for conn, (process, deadline, tag) in list(self.busy.items()):
            if time.monotonic() > deadline:
                del self.busy[conn]
                process.kill()
                process.join()
                results.append((tag, "hang", "", self.timeout))
                self.idle.append(self._start())
        return results

    def close(self) -> None:
        for process, conn in self.idle:
            conn.send(None)
            process.join(10)


def kind_of(problem: str) -> str:
    """The message without values, to count errors by kind."""
    text = re.sub(r", got .*", "", problem)
    text = re.sub(r"'[^']*'", "<name>", text)
    text = re.sub(r"-?\b\d[\d,.e+-]*\b", "N", text)
    return re.sub(r"\[[^\]]*\]", "[..]", text)[:120]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="mutated copies to decode and render")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--file", action="append", default=[], help="a real .vqrf to mutate too (repeatable)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a copy may take before it counts as a hang")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--name", default="fuzz_header")
    args = ap.parse_args()

    bases = small_files()
    bases.update({Path(f).name: Path(f).read_bytes() for f in args.file})
    headers = {name: split(data)[0]["header"] for name, data in bases.items()}
    for name, data in bases.items():
        outcome = check_file(data)
        if outcome[0] != "rendered":
            sys.exit(f"fuzz_header: the unmutated base {name} does not render: {outcome}")

    rng = np.random.default_rng(args.seed)
    names = list(bases)
    outcomes: Counter[str] = Counter()
    per_base: dict[str, Counter[str]] = {name: Counter() for name in names}
    errors: Counter[str] = Counter()
    mutated_paths: Counter[str] = Counter()
    failures: list[dict] = []
    times: list[float] = []
    pool = Workers(args.workers, bases[names[0]], args.timeout)
    start = time.perf_counter()

    def record(tag: tuple[int, str, list[str]], outcome: str, detail: str, seconds: float) -> None:
        i, base, edits = tag
        outcomes[outcome] += 1
        per_base[base][outcome] += 1
        times.append(seconds)
        if outcome == "VqrfError":
            errors[kind_of(detail)] += 1
        elif outcome != "rendered" and len(failures) < 30:
            failures.append({"copy": i, "base": base, "edits": edits, "outcome": outcome, "detail": detail})

    for i in range(args.n):
        base = names[i % len(names)]
        header, edits = mutate_header(headers[base], rng)
        mutated_paths.update(re.sub(r"\.\d+", ".N", e.split(" = ")[0].removeprefix("del ").removeprefix("grow "))
                             for e in edits)
        while not pool.idle:
            for result in pool.collect():
                record(*result)
        pool.submit(with_header(bases[base], header), (i, base, edits))
        if (i + 1) % 1000 == 0:
            print(f"fuzz_header: {i + 1:,} of {args.n:,} copies sent", file=sys.stderr, flush=True)
    while pool.busy:
        for result in pool.collect():
            record(*result)
    pool.close()
    wall = time.perf_counter() - start

    bad = outcomes["exception"] + outcomes["hang"] + outcomes["non-finite"]
    ms = 1e3 * np.array(times)
    result = {
        "n": args.n, "seed": args.seed, "timeout_s": args.timeout, "workers": args.workers, "render_px": SIZE,
        "bases": {name: len(data) for name, data in bases.items()},
        "outcomes": {k: outcomes[k] for k in ("rendered", "VqrfError", "exception", "hang", "non-finite")},
        "outcomes_by_base": {name: dict(c) for name, c in per_base.items()},
        "header_paths_mutated": len(mutated_paths),
        "vqrf_errors_by_kind": dict(errors.most_common()),
        "failures": bad, "failure_examples": failures,
        "ms_per_copy": {"mean": round(float(ms.mean()), 2), "p99": round(float(np.quantile(ms, 0.99)), 1),
                        "max": round(float(ms.max()), 1)},
        "wall_s": round(wall, 1),
        # This process's peak; a worker's would include it (Linux keeps the high-water mark across the fork and
        # exec that start a worker).
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    path = write_result(args.name, result)
    options = "".join(f" --file {f}" for f in args.file) + (f" --workers {args.workers}" if args.workers != 1 else "")
    add_doc_row(
        "Header fuzzing (decoding and rendering .vqrf files with mutated headers)",
        "| date | command | base files | copies | rendered | VqrfError | other exceptions | hangs | non-finite images "
        "| ms/copy mean / max | wall s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | `{path.name}`: `python benchmarks/fuzz_header.py --n {args.n} "
        f"--seed {args.seed}{options}{' --name ' + args.name if args.name != 'fuzz_header' else ''}` | "
        f"{', '.join(names)} | {args.n:,} | {outcomes['rendered']:,} | {outcomes['VqrfError']:,} | "
        f"{outcomes['exception']} | {outcomes['hang']} | {outcomes['non-finite']} | "
        f"{result['ms_per_copy']['mean']:.1f} / {result['ms_per_copy']['max']:.0f} | {wall:.0f} |",
    )
    print(json.dumps(result, indent=2))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
