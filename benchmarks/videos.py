"""Videos of the compressed scenes through `vqrf render`: a 120-frame orbit of lego-cpu and a 120-frame fern spiral.

For each video it checks what the issue asks: imageio-ffmpeg's frame count equals the frames asked for, and frame k of
the mp4 equals `render_frame` (what `vqrf render` draws) for path camera k, up to H.264's loss (PSNR reported).

    python benchmarks/videos.py [--frames 120] [--check 0,30,60,119] [--fern-resolution 252x190]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from common import ROOT, add_doc_row, data_root, peak_rss_mb, write_result
from vqrf.cli import main as vqrf_main
from vqrf.data import load_scene
from vqrf.metrics import psnr
from vqrf.models import open_model
from vqrf.render.paths import path_poses, resized
from vqrf.video import render_frame


def one_video(name: str, model_path: Path, data: Path, kind: str, frames: int, check: list[int], out: Path,
              resolution: str | None) -> dict:
    video = out / f"{name}_{kind}.mp4"
    start = time.perf_counter()
    code = vqrf_main(["render", str(model_path), "--data", str(data), "--path", kind, "--frames", str(frames),
                      "-o", str(video), "--force", *(["--resolution", resolution] if resolution else []),
                      *([] if sys.stderr.isatty() else ["--quiet"])])
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"vqrf render failed for {name}")
    counted = {p.name: imageio_ffmpeg.count_frames_and_secs(str(p))[0]
               for p in (video, video.with_name(video.stem + "_depth.mp4"))}

    model = open_model(model_path)
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    w, h = meta["size"]
    # the cameras `vqrf render` uses: the file's own training cameras, or for an older file the dataset's
    views = model.scene.views or load_scene(data, "train", downscale=model.preset.downscale).camera_set()
    cameras = resized(views.cameras, path_poses(views, kind, frames), w, h)
    wanted, matches = set(check), {}
    for k, raw in enumerate(reader):
        if k in wanted:
            frame = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
            matches[k] = psnr(frame / 255.0, render_frame(model, cameras, k)[0] / 255.0)
    reader.close()
    return {"video": str(video.relative_to(ROOT)), "frames_asked": frames, "frames_counted": counted,
            "size": [w, h], "bytes": video.stat().st_size, "render_seconds": seconds,
            "frames_per_second": frames / seconds, "psnr_vs_render_frame": matches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--check", default="0,30,60,119", help="frames compared with render_frame")
    ap.add_argument("--fern-resolution", default="252x190",
                    help="fern frame size (its 504x378 training size takes ~20 s a frame on 2 cores)")
    args = ap.parse_args()
    data = data_root()
    check = [int(k) for k in args.check.split(",")]
    out = ROOT / "benchmarks" / "out" / "videos"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("lego", ROOT / "benchmarks/out/lego_cpu_compress/lego.vqrf", data / "nerf_synthetic/lego", "orbit", None),
            ("fern", ROOT / "benchmarks/out/fern_compress/fern.vqrf", data / "nerf_llff_data/fern", "spiral",
             args.fern_resolution)]
    results = {}
    for name, model_path, scene, kind, resolution in jobs:
        if not model_path.is_file():
            sys.exit(f"{model_path} missing: run benchmarks/lego_cpu_compress.py and benchmarks/fern_compress.py")
        results[name] = one_video(name, model_path, scene, kind, args.frames, check, out, resolution)
    result = {"videos": results, "peak_rss_mb": peak_rss_mb()}
    path = write_result("videos", result)
    print(json.dumps(result, indent=2))
    for name, r in results.items():
        worst = min(r["psnr_vs_render_frame"].values())
        add_doc_row("Videos (vqrf render)",
                    "| date | machine | command | scene | path | frames (ffmpeg count) | size | fps | frame k vs render_frame (min PSNR) |\n"
                    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                    f"| {time.strftime('%Y-%m-%d')} | 2-core CPU | `python benchmarks/videos.py` | {name} .vqrf | "
                    f"{r['video'].rsplit('_', 1)[1][:-4]} | {r['frames_asked']} ({', '.join(map(str, r['frames_counted'].values()))}) "
                    f"| {r['size'][0]}x{r['size'][1]} | {r['frames_per_second']:.2f} | {worst:.1f} dB over frames {args.check} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
