"""`vqrf view` in headless Chromium: a screenshot for the docs, and how long its frames take on this CPU.

Serves the compressed lego-cpu scene with its training cameras, opens it in Debian's Chromium (software WebGL), waits
for the full frame, saves docs/viewer.png, then drags the camera a few times and records preview and full-frame
render times.

    python benchmarks/viewer_screenshot.py [--model benchmarks/out/lego_cpu_compress/lego.vqrf]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, add_doc_row, data_root, write_result
from vqrf.data import load_scene
from vqrf.models import open_model
from vqrf.viewer import Frame, Viewer

FLAGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_for_refined(frames: list[Frame], after: int, timeout: float = 120.0) -> Frame:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refined = [f for f in frames[after:] if f.refined]
        if refined:
            return refined[-1]
        time.sleep(0.1)
    sys.exit("viewer_screenshot: no full frame arrived")


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks/out/lego_cpu_compress/lego.vqrf"))
    ap.add_argument("--drags", type=int, default=5)
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("viewer_screenshot: needs Debian's chromium (apt-get install chromium)")
    model_path = Path(args.model)
    if not model_path.is_file():
        sys.exit(f"{model_path} missing: run benchmarks/lego_cpu_compress.py first")
    model = open_model(model_path)
    views = load_scene(data_root() / "nerf_synthetic/lego", "train", downscale=model.preset.downscale).camera_set()
    viewer = Viewer(model, model_path, views, port=0)
    frames: list[Frame] = []
    viewer.on_frame(frames.append)
    shot = ROOT / "docs" / "viewer.png"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(viewer.url)
            first = wait_for_refined(frames, 0)
            # Headless Chromium has no GPU, and viser says so in a toast; it is not part of the viewer.
            page.add_style_tag(content=".mantine-Notifications-root { display: none !important; }")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shot))
            for k in range(args.drags):
                start = len(frames)
                page.mouse.move(500, 380)
                page.mouse.down()
                page.mouse.move(500 - 60 - 10 * k, 380 + (-1) ** k * 15, steps=10)
                page.mouse.up()
                wait_for_refined(frames, start)
                page.wait_for_timeout(300)
            browser.close()
    finally:
        viewer.close()
    previews = [f.seconds for f in frames if not f.refined]
    full = [f for f in frames if f.refined]
    result = {"model": str(model_path.relative_to(ROOT)), "screenshot": str(shot.relative_to(ROOT)),
              "viewport": [1280, 760], "max_resolution": viewer.settings.max_resolution,
              "preview_resolution": viewer.settings.preview_resolution,
              "full_frame_size": [first.cameras.width, first.cameras.height],
              "preview_frames": len(previews), "preview_ms_median": 1000 * statistics.median(previews),
              "full_frames": len(full), "full_ms_median": 1000 * statistics.median(f.seconds for f in full)}
    path = write_result("viewer", result)
    print(json.dumps(result, indent=2))
    add_doc_row("Viewer (vqrf view, headless Chromium)",
                "| date | machine | command | scene | full frame | median full-frame render | preview | median preview render |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
                f"| {time.strftime('%Y-%m-%d')} | 2-core CPU | `python benchmarks/viewer_screenshot.py` | lego-cpu .vqrf | "
                f"{first.cameras.width}x{first.cameras.height} | {result['full_ms_median']:.0f} ms "
                f"({len(full)} frames) | {viewer.settings.preview_resolution} px long side | "
                f"{result['preview_ms_median']:.0f} ms ({len(previews)} frames) |")
    print(f"wrote {shot} and {path}")


if __name__ == "__main__":
    main()
