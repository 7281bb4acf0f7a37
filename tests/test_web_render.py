"""The browser player's renderer: in headless Chromium (software WebGL2), the page's image of a fixed camera equals
``render_frame``'s (the renderer behind ``vqrf render`` and the viewer) for the same ``.vqrf`` file, to >= 35 dB PSNR
at 128x128, for a TensoRF field, an LLFF scene in NDC, a contracted capture and a DVGO field.

Each case trains a tiny model in seconds (its quality does not matter, only that its image has structure), packs
it into a ``.vqrf``, and serves the player's folder (vqrf/web) with the file beside it; the page fetches the file,
decodes it (container.js, header_check.js, field.js) and renders it (renderer.js), and ``window.vqrfPlayer.
renderCamera`` renders the test's camera.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqrf.checkpoint import LoadedModel, SceneInfo, load_model
from vqrf.compress.codec import Precision, decode_field, encode_field
from vqrf.compress.vq import build_vq
from vqrf.config import demo_preset, get_preset, preset_with
from vqrf.data import load_scene
from vqrf.data.scene import Cameras
from vqrf.data.synthetic import make_demo_scene
from vqrf.render.paths import look_at
from vqrf.train import train
from vqrf.video import render_frame
from vqrf.web import PAGE_FILES, WEB_DIR, SiteServer
from browser import chromium_path  # noqa: E402

SIZE = 128
MIN_PSNR = 35.0
# Software WebGL2 (SwiftShader through ANGLE): no GPU is needed, and none is used when there is one.
CHROMIUM_FLAGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


# ---- the files ------------------------------------------------------------------------------------------------------
# Tiny models, trained in seconds: the grid learning rate is raised 5x so that a few dozen iterations already give a
# recognisable scene (a foggy early field would test little, and cost the software renderer many shaded samples).
FAST_LR = 5.0
# A smaller TensoRF architecture for the LLFF case, whose every pixel crosses the field; the demo cases cover the
# default one.
SMALL_TENSORF = dict(density_comps=(8, 4, 4), app_comps=(12, 8, 8), app_dim=12, mlp_width=32)


def pack(model: LoadedModel, precision: Precision) -> bytes:
    """``model`` as a .vqrf: every grid split into kept, vector-quantised and pruned sites.

    The split follows a random importance (fast; the codec does not care where the importance came from)."""
    generator = torch.Generator().manual_seed(0)
    importance = [torch.rand(grid.shape, generator=generator, dtype=torch.float64)
                  for grid in model.field.feature_grids()]
    state = build_vq(model.field, importance, 0.5, 0.95, lambda n: 64, progress=False, kmeans_iters=10)
    state.apply(model.field)
    return encode_field(model.field, state, model.occupancy, model.preset, model.scene, precision)


def view(cameras: Cameras, i: int) -> Cameras:
    """View ``i`` of ``cameras`` as a SIZE x SIZE pinhole camera (intrinsics scaled, lens distortion dropped)."""
    sx, sy = SIZE / cameras.width, SIZE / cameras.height
    one = lambda v: v[i : i + 1].float().clone()  # noqa: E731
    return Cameras(cameras.c2w[i : i + 1].float().clone(), one(cameras.fx) * sx, one(cameras.fy) * sy,
                   one(cameras.cx) * sx, one(cameras.cy) * sy, SIZE, SIZE)


def looking(eye: list[float], target: list[float], fov_degrees: float = 70.0) -> Cameras:
    """A SIZE x SIZE camera at ``eye`` looking at ``target``, z up."""
    c2w = look_at(torch.tensor(eye), torch.tensor(target), torch.tensor([0.0, 0.0, 1.0]))
    f = torch.tensor([0.5 * SIZE / math.tan(math.radians(fov_degrees) / 2)])
    centre = torch.tensor([SIZE / 2])
    return Cameras(c2w[None].float(), f, f.clone(), centre, centre.clone(), SIZE, SIZE)


def as_contracted(model: LoadedModel, lo: list[float], hi: list[float]) -> LoadedModel:
    """The same field moved into contracted space, its box (and its occupancy's) mapped linearly onto [lo, hi]: an
    unbounded scene as a capture's file describes one (contract, no background colour, far 10^4)."""
    box = model.field.aabb.clone()
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)

    def mapped(b: torch.Tensor) -> torch.Tensor:
        return (b - box[0]) / (box[1] - box[0]) * (hi_t - lo_t) + lo_t

    with torch.no_grad():
        model.field.aabb.copy_(mapped(box))
    model.occupancy.aabb = mapped(model.occupancy.aabb)
    model.scene = SceneInfo(near=0.05, far=1e4, ndc=False, white_bg=False, contract=True)
    return model


@dataclasses.dataclass
class Case:
    data: bytes
    camera: Cameras


def _trained(tmp_path_factory, name: str, scene, preset) -> Path:
    out = tmp_path_factory.mktemp(name)
    train(scene, preset, out, progress=False)
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The demo scene with the default TensoRF-VM architecture: 60 iterations on 20 views of 32x32."""
    base = demo_preset()
    cfg = dataclasses.replace(base.train, iters=60, batch_rays=512, n_voxel_init=24**3, n_voxel_final=32**3,
                              upsample_at=(20, 40), alpha_mask_at=(15, 30, 48), lr_grid=base.train.lr_grid * FAST_LR)
    return _trained(tmp_path_factory, "demo", make_demo_scene("train", n_views=20, size=32),
                    dataclasses.replace(base, train=cfg))


@pytest.fixture(scope="module")
def tensorf_case(demo_run) -> Case:
    """TensoRF-VM in a bounded scene; fp16 codebooks, lines and network."""
    return Case(pack(load_model(demo_run), Precision()), view(make_demo_scene("test", n_views=4, size=32).cameras, 1))


@pytest.fixture(scope="module")
def contracted_case(demo_run) -> Case:
    """The demo field across the unit cube's face x = 1 in contracted space (half of it where space is squeezed),
    seen from inside the cube; every matrix int8."""
    model = as_contracted(load_model(demo_run), [0.1, -0.9, -0.9], [2.0, 0.9, 0.9])
    return Case(pack(model, Precision("int8", "int8", "int8")), looking([-0.9, -0.35, 0.35], [1.0, 0.0, 0.0]))


@pytest.fixture(scope="module")
def llff_case(fern_dir, tmp_path_factory) -> Case:
    """fern in NDC (the llff-cpu preset: ReLU density, no encodings, depth steps); int8 codebooks, fp16 lines and
    network."""
    scene = load_scene(fern_dir, "train", downscale=32)
    preset = preset_with("llff-cpu", iters=60, grid_init=24, grid_final=32, batch_rays=512)
    preset.field = dataclasses.replace(preset.field, **SMALL_TENSORF)
    preset.train.lr_grid *= FAST_LR
    preset.train.weight_thres = 1e-2  # an early field is foggy: fewer shaded samples keep the software render short
    model = load_model(_trained(tmp_path_factory, "llff", scene, preset))
    return Case(pack(model, Precision("int8", "fp16", "fp16")), view(scene.cameras, 3))


@pytest.fixture(scope="module")
def dvgo_case(tmp_path_factory) -> Case:
    """DVGO's two stages on the demo scene, shrunk to seconds; int8 codebooks and network, fp16 lines."""
    preset = get_preset("cpu", "dvgo")
    preset.coarse.train = dataclasses.replace(preset.coarse.train, iters=30, batch_rays=512, n_voxel_init=16**3,
                                              n_voxel_final=16**3)
    preset.train = dataclasses.replace(preset.train, iters=60, batch_rays=512, n_voxel_init=16**3,
                                       n_voxel_final=24**3, upsample_at=(20, 40), alpha_mask_at=(30, 50))
    run = _trained(tmp_path_factory, "dvgo", make_demo_scene("train", n_views=12, size=32), preset)
    return Case(pack(load_model(run), Precision("int8", "fp16", "int8")),
                view(make_demo_scene("test", n_views=4, size=32).cameras, 1))


# ---- the page -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page's files as `vqrf export-web` writes them, served on a local port: (folder, url)."""
    folder = tmp_path_factory.mktemp("site")
    for name in PAGE_FILES:
        shutil.copyfile(WEB_DIR / name, folder / name)
    server = SiteServer(folder)
    try:
        yield folder, server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def page(site):
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        try:
            # A small window: the player sharpens its own view (besides the test's renders) up to its size.
            yield browser.new_page(viewport={"width": 96, "height": 72})
        finally:
            browser.close()


def open_file(page, site, name: str, data: bytes | None) -> str:
    """Point the player at ``name`` (written into the site unless ``data`` is None; ``scene.vqrf`` is the page's
    default, opened without a query) and wait until it is ready or has failed; returns that state."""
    folder, url = site
    if data is not None:
        (folder / name).write_bytes(data)
    page.goto(f"{url}index.html" if name == "scene.vqrf" else f"{url}index.html?file={name}")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    return page.evaluate("document.body.dataset.state")


# Renders a fixed camera through the player's test hook, in RGB and depth, and times each.
_RENDER_CAMERA = """async ([c]) => {
  const out = {};
  for (const mode of ['rgb', 'depth']) {
    const t0 = performance.now();
    const px = await window.vqrfPlayer.renderCamera(c.c2w, c.fx, c.fy, c.cx, c.cy, c.width, c.height, mode);
    out[mode + 'Ms'] = performance.now() - t0;
    let s = '';
    for (let i = 0; i < px.length; i += 8192) s += String.fromCharCode(...px.subarray(i, i + 8192));
    out[mode] = btoa(s);
  }
  return out;
}"""


def render_in_page(page, site, name: str, data: bytes, camera: Cameras) -> dict:
    """RGB and depth images [SIZE, SIZE, 4] uint8 of ``camera`` as the page renders the file, and their times."""
    assert open_file(page, site, name, data) == "ready", page.evaluate("document.body.dataset.error")
    js_camera = {"c2w": camera.c2w[0].tolist(), "fx": float(camera.fx[0]), "fy": float(camera.fy[0]),
                 "cx": float(camera.cx[0]), "cy": float(camera.cy[0]), "width": SIZE, "height": SIZE}
    out = page.evaluate(_RENDER_CAMERA, [js_camera])
    for mode in ("rgb", "depth"):
        out[mode] = np.frombuffer(base64.b64decode(out[mode]), np.uint8).reshape(SIZE, SIZE, 4)
    return out


@pytest.mark.parametrize("case", ["tensorf", "llff", "contracted", "dvgo"])
def test_page_renders_what_render_frame_renders(case, request, page, site):
    c: Case = request.getfixturevalue(f"{case}_case")
    model = decode_field(c.data, case)
    want_rgb, want_depth = render_frame(model, c.camera, 0)
    got = render_in_page(page, site, f"{case}.vqrf", c.data, c.camera)
    rgb_psnr = psnr(got["rgb"][..., :3], want_rgb)
    depth_psnr = psnr(got["depth"][..., 0], want_depth)
    print(f"{case}: rgb {rgb_psnr:.2f} dB in {got['rgbMs']:.0f} ms, depth {depth_psnr:.2f} dB in "
          f"{got['depthMs']:.0f} ms")
    assert want_rgb.std() > 5, "the reference image is blank: the camera misses the scene"
    assert rgb_psnr >= MIN_PSNR, (case, rgb_psnr)
    assert depth_psnr >= MIN_PSNR, (case, depth_psnr)
    assert (got["rgb"][..., 3] == 255).all()


# ---- the page's controls and its error state ------------------------------------------------------------------------
def test_controls_orbit_zoom_jump_to_training_cameras_and_switch_to_depth(page, site, tensorf_case):
    data = tensorf_case.data
    views = decode_field(data, "ui").scene.views
    assert views is not None  # the test file stores its training cameras (field version 3)
    page.set_viewport_size({"width": 640, "height": 360})  # room beside the panel to drag in
    try:
        assert open_file(page, site, "scene.vqrf", data) == "ready", page.evaluate("document.body.dataset.error")
        assert f"{len(data):,} bytes" in page.text_content("#facts")
        pose = lambda: np.array(page.evaluate("window.vqrfPlayer.camera(4, 4).c2w"))  # noqa: E731
        distance = lambda: page.evaluate(  # noqa: E731 (camera to orbit target)
            "(() => { const v = window.vqrfPlayer.view; "
            "return Math.hypot(...v.pose.eye.map((e, i) => e - v.target[i])); })()")
        frames = lambda: int(page.evaluate("document.body.dataset.frames || 0"))  # noqa: E731

        def new_frame(after: int) -> None:
            page.wait_for_function(f"Number(document.body.dataset.frames || 0) > {after}", timeout=60_000)

        home = pose()
        drawn = frames()
        page.mouse.move(500, 200)
        page.mouse.down()
        page.mouse.move(560, 230, steps=5)
        page.mouse.up()
        moved = pose()
        assert np.abs(moved[:, :3] - home[:, :3]).max() > 0.05, "dragging did not turn the camera"
        new_frame(drawn)

        before = distance()
        page.mouse.wheel(0, -200)
        assert distance() < 0.9 * before, "the wheel did not zoom in"

        assert page.locator("#cameras option").count() == len(views.cameras) + 1
        page.select_option("#cameras", "3")
        np.testing.assert_allclose(pose(), views.cameras.c2w[3].numpy(), atol=1e-6)

        drawn = frames()
        page.click("#depth")
        assert page.evaluate("document.body.dataset.mode") == "depth"
        new_frame(drawn)
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip={"x": 400, "y": 60, "width": 200,
                                                                       "height": 240}))).convert("RGB")).astype(int)
        assert np.abs(shot - shot[..., :1]).max() <= 1 and shot.std() > 5, "the depth view is not a grey image"

        page.click("#reset")
        np.testing.assert_allclose(pose(), home, atol=1e-6)
        page.keyboard.press("c")
        assert page.evaluate("document.body.dataset.mode") == "rgb"
    finally:
        page.set_viewport_size({"width": 96, "height": 72})


def test_a_missing_truncated_or_corrupted_file_is_a_one_line_error(page, site, tensorf_case):
    data = tensorf_case.data
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10  # inside a payload: its CRC no longer matches
    cases = {"missing.vqrf": (None, "could not be fetched"), "truncated.vqrf": (data[: len(data) // 3], ""),
             "corrupted.vqrf": (bytes(flipped), "crc")}
    for name, (body, words) in cases.items():
        assert open_file(page, site, name, body) == "error", name
        message = page.evaluate("document.body.dataset.error")
        assert "\n" not in message and name in message and words in message.lower(), message
        assert page.text_content("#message") == message
