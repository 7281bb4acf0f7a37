"""The viewer: camera conventions, and a real browser (headless Chromium) that connects, moves the camera and receives
a frame equal to ``render_frame`` (the function ``vqrf render`` writes videos with) for that camera."""

from __future__ import annotations

import io
import math
import socket
import subprocess
import sys
import time
import urllib.request

import msgspec
import numpy as np
import pytest
import torch
import zstandard
from PIL import Image

from vqrf.checkpoint import load_model
from vqrf.cli import main
from vqrf.data.synthetic import make_demo_scene
from vqrf.render.paths import look_at
from vqrf.render.rays import camera_rays
from vqrf.video import render_frame
from vqrf.viewer import Frame, Viewer, ViewerSettings, c2w_from_viser, view_camera, viser_from_c2w
from browser import chromium_path  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_viser_pose_round_trip_and_axes():
    c2w = look_at(torch.tensor([1.0, -3.0, 2.0]), torch.tensor([0.2, 0.1, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    wxyz, position = viser_from_c2w(c2w)
    torch.testing.assert_close(c2w_from_viser(wxyz, position), c2w, atol=1e-6, rtol=0)
    # viser poses are OpenCV: the camera's +z looks forward and +y points down the image.
    import viser.transforms as vtf

    r = vtf.SO3(wxyz).as_matrix()
    np.testing.assert_allclose(r[:, 2], -c2w[:, 2].numpy(), atol=1e-6)
    np.testing.assert_allclose(r[:, 1], -c2w[:, 1].numpy(), atol=1e-6)


def test_view_camera_keeps_aspect_and_field_of_view():
    cams = view_camera(torch.eye(4)[:3], math.radians(60), 16 / 9, 160)
    assert (cams.width, cams.height) == (160, 90)
    _, d = camera_rays(cams, 0)
    top, bottom = d[0 * 160 + 80], d[89 * 160 + 80]  # middle column, first and last rows
    angle = math.degrees(math.acos(float(top @ bottom)))
    assert abs(angle - 60 * 89 / 90) < 0.5  # pixel centres span (H-1)/H of the field of view
    portrait = view_camera(torch.eye(4)[:3], math.radians(60), 0.5, 100)
    assert (portrait.width, portrait.height) == (50, 100)


def test_slow_scenes_sharpen_in_steps(demo_model):
    viewer = Viewer(load_model(demo_model), demo_model, port=0,
                    settings=ViewerSettings(max_resolution=512, preview_resolution=64, refine_step_seconds=1.0))
    try:
        assert viewer.next_side(0) == 512  # speed unknown yet: straight to the full frame
        viewer._rays_per_s = 20_000.0  # 512 px would take ~10 s, 256 px ~2.5 s, 128 px ~0.6 s
        assert [viewer.next_side(s) for s in (0, 128, 256)] == [128, 256, 512]
        viewer._rays_per_s = 5e6
        assert viewer.next_side(0) == 512
    finally:
        viewer.close()


def _decode_server_frames(payload: bytes) -> list[dict]:
    """viser's wire format (see viser.infra): two little-endian u64 sizes, zstd-compressed msgpack, binary buffers."""
    size = int.from_bytes(payload[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(payload[16:16 + size])
    return msgspec.msgpack.decode(inner)["messages"]


class Browser:
    """A headless Chromium page on the viewer, recording the camera messages it sends and the images it receives."""

    def __init__(self, url: str):
        from playwright.sync_api import sync_playwright

        self.cameras: list[dict] = []
        self.images: list[tuple[str, bytes]] = []
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        self.page = self._browser.new_page(viewport={"width": 640, "height": 480})
        self.page.on("websocket", self._watch)
        self.page.goto(url)

    def _watch(self, ws) -> None:
        def sent(payload) -> None:
            if isinstance(payload, bytes):
                message = msgspec.msgpack.decode(payload)
                if message.get("type") == "ViewerCameraMessage":
                    self.cameras.append(message)

        def received(payload) -> None:
            if isinstance(payload, bytes):
                for m in _decode_server_frames(payload):
                    if m.get("type") == "BackgroundImageMessage" and m.get("rgb_data"):
                        self.images.append((m["format"], bytes(m["rgb_data"])))

        ws.on("framesent", sent)
        ws.on("framereceived", received)

    def wait(self, seconds: float) -> None:
        self.page.wait_for_timeout(seconds * 1000)  # lets playwright deliver websocket events meanwhile

    def drag(self, dx: int, dy: int) -> None:
        m = self.page.mouse
        m.move(200, 240)
        m.down()
        m.move(200 + dx, 240 + dy, steps=8)
        m.up()

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def test_browser_moves_the_camera_and_receives_the_rendered_frame(demo_model):
    model = load_model(demo_model)
    views = make_demo_scene("train", n_views=12, size=24).camera_set()
    viewer = Viewer(model, demo_model, views, port=0,
                    settings=ViewerSettings(max_resolution=64, preview_resolution=24, refine_after=0.2))
    sent: list[Frame] = []
    viewer.on_frame(sent.append)
    browser = None
    try:
        browser = Browser(viewer.url)

        def settled(after: int, timeout: float = 60.0) -> Frame:
            """The refined frame the viewer ends on once the browser stops moving: nothing new sent for a while,
            and the browser's last image a PNG (refined frames are lossless, previews JPEG)."""
            deadline, count = time.monotonic() + timeout, -1
            while time.monotonic() < deadline:
                browser.wait(0.6)
                refined = [f for f in sent[after:] if f.refined]
                if refined and len(sent) == count and browser.images[-1][0] == "png":
                    assert sent[-1] is refined[-1]
                    return refined[-1]
                count = len(sent)
            raise AssertionError(f"no refined frame settled within {timeout} s ({len(sent)} frames sent)")

        first = settled(0)
        browser.drag(-90, 25)
        second = settled(len(sent))
    finally:
        if browser is not None:
            browser.close()
        viewer.close()

    # The camera moved: the browser's drag turned the view.
    turn = float(first.cameras.c2w[0, :, 2] @ second.cameras.c2w[0, :, 2])
    assert turn < math.cos(math.radians(5)), "the drag did not move the camera"
    # The image the browser received last is the refined frame, and it equals render_frame for the camera the browser
    # reported: the viewer renders through the same code as `vqrf render`.
    fmt, png = browser.images[-1]
    received = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert fmt == "png" and received.shape == second.image.shape
    camera = browser.cameras[-1]
    c2w = c2w_from_viser(np.array(camera["wxyz"]), np.array(camera["position"]))
    long_side = max(received.shape[:2])
    cams = view_camera(c2w, camera["fov"], camera["image_width"] / camera["image_height"], long_side)
    assert (cams.height, cams.width) == received.shape[:2]
    want, _ = render_frame(model, cams, 0)
    diff = np.abs(received.astype(int) - want.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, f"max {diff.max()}, mean {diff.mean():.4f}"
    assert want.std() > 5  # a real picture of the scene, not a blank background
    # The camera the browser reports looks where its orbit target is (checks the OpenCV/OpenGL conversion end to end).
    toward = np.array(camera["look_at"]) - np.array(camera["position"])
    forward = -c2w[:, 2].double().numpy()
    assert float(forward @ toward / np.linalg.norm(toward)) > 0.999


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_cli_serves_the_page(demo_model):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vqrf.cli", "view", str(demo_model), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line + proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200 and b"<html" in r.read(2000).lower()
                break
            except OSError:
                assert time.monotonic() < deadline, "the viewer did not answer HTTP"
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_view_cli_bad_input(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing.vqrf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.vqrf" in err and "no such model file" in err
    broken = tmp_path / "broken.vqrf"
    broken.write_bytes(b"VQRF" + bytes(10))
    assert main(["view", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.vqrf" in err
