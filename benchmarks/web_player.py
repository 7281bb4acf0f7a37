"""The browser player in headless Chromium on this CPU (software WebGL2: an upper bound on what a GPU takes).

Exports the lego-cpu file with ``vqrf export-web``, serves the folder, and measures in the page: the JavaScript decode
of the file (container, header checks, field rebuild), the time from navigation to the first full frame, and the
frame time at 128x128 and 256x256 for a training camera; also the bytes of the page's own code. Saves a screenshot of
the player to docs/web_player.png. Writes benchmarks/results/web_player.json and a row in docs/benchmarks.md.

    python benchmarks/web_player.py [--file benchmarks/out/lego_cpu_compress/lego.vqrf] [--frames 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, add_doc_row, write_result
from vqrf.models import open_model
from vqrf.web import PAGE_FILES, WEB_DIR, SiteServer, export_site

# WebGL2 in software (SwiftShader through ANGLE), as the browser tests run it.
CHROMIUM_FLAGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run"]

DECODE_JS = """async () => {
  const { decodeContainer } = await import('./container.js');
  const { buildField } = await import('./field.js');
  const bytes = await (await fetch('scene.vqrf')).arrayBuffer();
  const times = [];
  for (let i = 0; i < 3; i++) {
    const start = performance.now();
    buildField(await decodeContainer(bytes));
    times.push(performance.now() - start);
  }
  return times;
}"""

FRAME_JS = """async ([c2w, fx, fy, cx, cy, w, h]) => {
  const start = performance.now();
  await window.vqrfPlayer.renderCamera(c2w, fx, fy, cx, cy, w, h);
  return performance.now() - start;
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(ROOT / "benchmarks" / "out" / "lego_cpu_compress" / "lego.vqrf"))
    ap.add_argument("--frames", type=int, default=5, help="frames timed per size (the median is reported)")
    ap.add_argument("--viewport", default="640x480", help="page size WxH (the screenshot's; frames are timed apart)")
    ap.add_argument("--name", default="web_player")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    vqrf_file = Path(args.file)
    model = open_model(vqrf_file)
    views = model.scene.views
    if views is None:
        raise SystemExit(f"{vqrf_file} stores no training cameras: compress it again with this vqrf")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    code_bytes = sum((WEB_DIR / name).stat().st_size for name in PAGE_FILES)

    with tempfile.TemporaryDirectory() as tmp:
        site = export_site(vqrf_file, Path(tmp) / "site")
        server = SiteServer(site)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            width, height = (int(v) for v in args.viewport.split("x"))
            page = browser.new_page(viewport={"width": width, "height": height})
            start = time.perf_counter()
            page.goto(server.url)
            page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=600_000)
            first_frame_s = time.perf_counter() - start
            if page.evaluate("document.body.dataset.state") == "error":
                raise SystemExit(f"the page failed: {page.evaluate('document.body.dataset.error')}")
            renderer = page.evaluate("document.querySelector('canvas').getContext('webgl2') ? "
                                     "(() => { const gl = document.querySelector('canvas').getContext('webgl2'); "
                                     "const e = gl.getExtension('WEBGL_debug_renderer_info'); "
                                     "return e ? gl.getParameter(e.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER); })() : ''")
            page.wait_for_function("document.body.dataset.sharp === 'true'", timeout=600_000)  # not the preview
            page.screenshot(path=str(ROOT / "docs" / "web_player.png"))
            decode_ms = page.evaluate(DECODE_JS)
            cam = views.cameras
            c2w = cam.c2w[0].tolist()
            frame_ms = {}
            for side in (128, 256):
                sx, sy = side / cam.width, side / cam.height
                fx, fy = float(cam.fx[0]) * sx, float(cam.fy[0]) * sy
                cx, cy = float(cam.cx[0]) * sx, float(cam.cy[0]) * sy
                times = [page.evaluate(FRAME_JS, [c2w, fx, fy, cx, cy, side, side]) for _ in range(args.frames)]
                frame_ms[side] = statistics.median(times)
            browser.close()
        server.close()

    summary = {
        "file": str(vqrf_file.relative_to(ROOT)) if vqrf_file.is_relative_to(ROOT) else str(vqrf_file),
        "file_bytes": vqrf_file.stat().st_size,
        "page_code_bytes": code_bytes,
        "page_files": list(PAGE_FILES),
        "webgl_renderer": renderer,
        "decode_ms": min(decode_ms),
        "decode_ms_all": decode_ms,
        "first_frame_s": first_frame_s,
        "frame_ms_128": frame_ms[128],
        "frame_ms_256": frame_ms[256],
        "screenshot": "docs/web_player.png",
    }
    path = write_result(args.name, summary)
    command_args = "".join(f" {a}" for a in sys.argv[1:])
    add_doc_row(
        "Browser player (headless Chromium, software WebGL2)",
        "| date | machine | command | file | page code | JS decode | first frame | frame 128² | frame 256² |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | 2-core CPU, {renderer or 'WebGL2'} | `{path.name}`: "
        f"`python benchmarks/web_player.py{command_args}` | {summary['file_bytes']:,} B | {code_bytes:,} B | "
        f"{summary['decode_ms']:.0f} ms | {first_frame_s:.1f} s | {frame_ms[128]:.0f} ms | {frame_ms[256]:.0f} ms |",
    )
    print(summary)


if __name__ == "__main__":
    main()
