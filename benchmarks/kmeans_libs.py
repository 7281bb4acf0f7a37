"""Which k-means for the codebooks: scikit-learn (k-means++ seeding) against faiss (random seeding).

Data: the vq texels of the lego-cpu model's plane 0 at the reference split (keep 0.7, non-prune 0.999), appearance
(48 channels) and density (16), weighted by importance. Reports seconds and the importance-weighted distortion for
the same iteration cap. faiss is optional (pip install faiss-cpu); rows for it are skipped when it is missing.

    python benchmarks/kmeans_libs.py [--sizes 1024,4096] [--iters 50]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, add_doc_row, data_root, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.importance import cached_importance, grid_importance
from vqrf.compress.split import cdf_split
from vqrf.data import load_scene
from vqrf.step import RayPool


def distortion(x: np.ndarray, codes: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    return float((((x - codes[labels]) ** 2).sum(1) * w).sum() / w.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks" / "out" / "lego_cpu" / "model.safetensors"))
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    from sklearn.cluster import KMeans

    model_path = Path(args.model)
    model = load_model(model_path)
    lego = data_root() / "nerf_synthetic" / "lego"
    scene = load_scene(lego, "train", downscale=4)
    maps = cached_importance(model_path, str(lego), 4.0, lambda: grid_importance(
        model.field, model.occupancy, RayPool(scene, torch.device("cpu")), model.render_settings(), progress=False))
    imp = maps[0].float()
    _, vq = cdf_split(imp, 0.7, 0.999)
    w = imp.flatten()[vq.flatten()].double().numpy()
    rows = []
    for kind, planes in (("app", model.field.app_planes), ("density", model.field.density_planes)):
        x = planes[0].detach().reshape(-1, planes[0].shape[-1])[vq.flatten()].numpy().astype(np.float32)
        for k in (int(s) for s in args.sizes.split(",")):
            start = time.perf_counter()
            km = KMeans(k, init="k-means++", n_init=1, max_iter=args.iters, random_state=0).fit(x, sample_weight=w)
            rows.append({"library": "scikit-learn", "kind": kind, "n": len(x), "dim": x.shape[1], "codes": k,
                         "seconds": time.perf_counter() - start,
                         "distortion": distortion(x, km.cluster_centers_, km.labels_, w)})
            try:
                import faiss
            except ImportError:
                continue
            start = time.perf_counter()
            fk = faiss.Kmeans(x.shape[1], k, niter=args.iters, seed=0, min_points_per_centroid=1,
                              max_points_per_centroid=1 << 20)
            fk.train(x, weights=w.astype(np.float32))
            _, labels = fk.index.search(x, 1)
            rows.append({"library": "faiss", "kind": kind, "n": len(x), "dim": x.shape[1], "codes": k,
                         "seconds": time.perf_counter() - start,
                         "distortion": distortion(x, fk.centroids, labels[:, 0], w)})
            print(rows[-2], rows[-1], flush=True)
    path = write_result("kmeans_libs", {"iters": args.iters, "rows": rows})
    add_doc_row(
        "k-means libraries for the codebooks",
        "| date | command | kind (n x dim) | codes | scikit-learn s / distortion | faiss s / distortion |\n"
        "| --- | --- | --- | --- | --- | --- |",
        "\n".join(
            f"| {time.strftime('%Y-%m-%d')} | `{path.name}`: `python benchmarks/kmeans_libs.py` | {r['kind']} "
            f"({r['n']} x {r['dim']}) | {r['codes']} | {r['seconds']:.2f} / {r['distortion']:.4f} | "
            + (f"{f['seconds']:.2f} / {f['distortion']:.4f} |" if f else "not installed |")
            for r, f in _pairs(rows)),
    )
    print(json.dumps(rows, indent=2))


def _pairs(rows: list[dict]) -> list[tuple[dict, dict | None]]:
    out = []
    for r in rows:
        if r["library"] == "scikit-learn":
            match = [f for f in rows if f["library"] == "faiss" and f["kind"] == r["kind"] and f["codes"] == r["codes"]]
            out.append((r, match[0] if match else None))
    return out


if __name__ == "__main__":
    main()
