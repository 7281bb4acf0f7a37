"""Look around a model in the browser: a viser server that renders the field for each connected camera.

While a camera moves, the viewer answers with small JPEG previews; once it has been still for a moment it renders
sharper frames up to the full one, which it sends losslessly (PNG). Every frame goes through the ``render_frame`` that
writes videos, so what the viewer shows is what ``vqrf render`` writes for that camera. A render whose camera moves on
is abandoned part-way.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vqrf.checkpoint import LoadedModel
from vqrf.compress.vq import describe_tiers
from vqrf.data.scene import Z_UP, Cameras, CameraSet
from vqrf.render.volume import RenderCancelled
from vqrf.video import render_frame

__all__ = ["ViewerSettings", "Frame", "Viewer", "c2w_from_viser", "viser_from_c2w", "view_camera"]

# OpenGL cameras (ours: y up, looking along -z) and OpenCV cameras (viser's: y down, looking along +z) differ by a
# half-turn about the camera's x axis.
_GL_FROM_CV = np.diag([1.0, -1.0, -1.0])
# Forward-facing (LLFF) scenes are recentred and scaled so that the nearest content is about 1 unit away.
_FORWARD_FOCUS = 2.0


@dataclass
class ViewerSettings:
    """How the viewer trades sharpness for speed."""

    max_resolution: int = 512
    """Long side of a refined frame in pixels (also capped by the browser's canvas)."""
    preview_resolution: int = 96
    """Long side of the frames shown while the camera moves."""
    refine_after: float = 0.25
    """Seconds the camera must stay still before sharper frames are rendered."""
    refine_step_seconds: float = 1.5
    """On slow scenes, sharpen in steps of about this long (halving the size) rather than one long full render."""
    jpeg_quality: int = 80


@dataclass
class Frame:
    """One image the viewer sent to a browser."""

    client_id: int
    cameras: Cameras
    """The single camera it was rendered for."""
    image: np.ndarray
    """What was sent: uint8 [H, W, 3]."""
    refined: bool
    """The full frame, sent lossless (PNG); otherwise a smaller JPEG (a preview or a sharpening step)."""
    seconds: float


def c2w_from_viser(wxyz: np.ndarray, position: np.ndarray) -> torch.Tensor:
    """viser's camera pose (OpenCV, world-from-camera quaternion + position) -> our camera-to-world [3, 4]."""
    import viser.transforms as vtf

    rotation = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix() @ _GL_FROM_CV
    return torch.from_numpy(np.concatenate([rotation, np.asarray(position, np.float64)[:, None]], axis=1)).float()


def viser_from_c2w(c2w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Our camera-to-world [3, 4] -> viser's (wxyz, position)."""
    import viser.transforms as vtf

    m = c2w.double().cpu().numpy()
    return vtf.SO3.from_matrix(m[:, :3] @ _GL_FROM_CV).wxyz, m[:, 3].copy()


def view_camera(c2w: torch.Tensor, fov_y: float, aspect: float, long_side: int) -> Cameras:
    """One pinhole camera at ``c2w`` with vertical field of view ``fov_y`` (radians), the canvas' aspect (width /
    height) and ``long_side`` pixels along its longer side."""
    if aspect >= 1:
        width, height = long_side, max(1, round(long_side / aspect))
    else:
        width, height = max(1, round(long_side * aspect)), long_side
    focal = 0.5 * height / math.tan(0.5 * fov_y)

    def one(v: float) -> torch.Tensor:
        return torch.tensor([v], dtype=torch.float32)

    return Cameras(c2w[None].float(), one(focal), one(focal), one(width / 2), one(height / 2), width, height)


def _vertical_fov(height: int, focal: float) -> float:
    """Vertical field of view (radians) of a pinhole camera ``height`` pixels tall with focal length ``focal``."""
    return 2 * math.atan(0.5 * height / focal)


def _default_view(model: LoadedModel) -> tuple[torch.Tensor, float]:
    """A starting camera when no training cameras are known: above and beside a bounded scene, or the mean pose of a
    forward-facing one (LLFF poses are recentred to the identity)."""
    from vqrf.render.paths import look_at

    info = model.scene
    if info.ndc:
        fov = _vertical_fov(info.height, info.ndc_focal) if info.ndc_focal else math.radians(50)
        return torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1), fov
    aabb = model.field.aabb.float().cpu()
    centre, half = aabb.mean(0), 0.5 * (aabb[1] - aabb[0])
    distance = 1.6 * float(half.norm())
    if info.contract:  # a capture's cameras fill [-1, 1]^3 about the subject (vqrf.data.capture)
        centre, distance = torch.zeros(3), 1.0
    eye = centre + distance * torch.tensor([math.cos(math.radians(30)), 0.0, math.sin(math.radians(30))])
    return look_at(eye, centre, torch.tensor(Z_UP)), math.radians(50)


class _ClientLoop(threading.Thread):
    """Renders for one browser: previews while its camera moves, sharper frames up to the full one once it rests."""

    def __init__(self, viewer: Viewer, client) -> None:
        super().__init__(daemon=True, name=f"vqrf-view-{client.client_id}")
        self.viewer, self.client = viewer, client
        self._wake = threading.Condition()
        self._version = 0  # bumped by every camera move or settings change
        self._moved_at = time.monotonic()
        self._stopped = False

    def changed(self) -> None:
        with self._wake:
            self._version += 1
            self._moved_at = time.monotonic()
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def run(self) -> None:
        shown = (-1, 0, False)  # the last frame sent: camera version, long side, refined
        while True:
            with self._wake:
                while not self._stopped and shown[0] == self._version and shown[2]:
                    self._wake.wait()
                if self._stopped:
                    return
                version, still_for = self._version, time.monotonic() - self._moved_at
                resting = still_for >= self.viewer.settings.refine_after
                if not resting and shown[0] == version:  # a preview is up: wait for the camera to rest
                    self._wake.wait(self.viewer.settings.refine_after - still_for)
                    continue
            side = (self.viewer.next_side(shown[1] if shown[0] == version else 0) if resting
                    else self.viewer.settings.preview_resolution)
            try:
                frame = self.viewer.render_for(self.client, side, lambda: self._version != version)
            except RenderCancelled:
                continue
            if frame is None:  # the browser has not reported its camera yet
                with self._wake:
                    self._wake.wait(0.1)
                continue
            self.client.scene.set_background_image(frame.image, format="png" if frame.refined else "jpeg",
                                                   jpeg_quality=self.viewer.settings.jpeg_quality)
            self.viewer.sent(frame)
            shown = (version, side, frame.refined)


class Viewer:
    """A viser server showing ``model``; its training cameras, when known, appear as frustums to jump between.

    Args:
        model: the field to show (decoded .vqrf or trained checkpoint).
        model_path: its file, for the panel.
        views: the training cameras, with the scene's up direction (default: the model file's own, if it stores
            them; files from before cameras were stored get them from their dataset).
        host, port: where to listen; port 0 picks a free one.
    """

    def __init__(self, model: LoadedModel, model_path: Path, views: CameraSet | None = None,
                 host: str = "127.0.0.1", port: int = 8080, settings: ViewerSettings | None = None) -> None:
        import viser

        self.model, self.model_path = model, Path(model_path)
        self.settings = settings or ViewerSettings()
        views = views or model.scene.views
        self.training = None if views is None else views.cameras
        self._render_lock = threading.Lock()  # one render at a time: each one already uses every core
        self._loops: dict[int, _ClientLoop] = {}
        self._listeners: list[Callable[[Frame], None]] = []
        self._rays_per_s: float | None = None  # measured on this machine and scene, for sizing refinement steps
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints a banner; the CLI prints its own line
            self.server = viser.ViserServer(host=host, port=port, verbose=False)
        # Forward-facing (LLFF) scenes are y-up and orbit a point ahead; bounded ones are z-up about the box centre,
        # unbounded captures about their subject (the origin of their canonical frame). The cameras know it exactly.
        if views is not None:
            self._up = views.up.double().cpu().numpy()
        else:
            self._up = np.array([0.0, 1.0, 0.0] if model.scene.ndc else Z_UP)
        if model.scene.ndc:
            self._target = torch.tensor([0.0, 0.0, -_FORWARD_FOCUS])
        elif model.scene.contract:
            self._target = torch.zeros(3)
        else:
            self._target = model.field.aabb.float().cpu().mean(0)
        self.server.scene.set_up_direction(self._up)
        self._home = self._start_view()
        self._set_initial_camera(*self._home)
        self._build_panel()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    # ---- what tests and the CLI use ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'localhost' if host == '0.0.0.0' else host}:{self.server.get_port()}"

    def on_frame(self, listener: Callable[[Frame], None]) -> None:
        """Call ``listener`` with every frame sent to a browser."""
        self._listeners.append(listener)

    def close(self) -> None:
        for loop in list(self._loops.values()):
            loop.stop()
        self.server.stop()

    # ---- rendering -----------------------------------------------------------------------------------------------
    def render_for(self, client, long_side: int, cancelled: Callable[[], bool]) -> Frame | None:
        """Render what ``client``'s camera sees now with ``long_side`` pixels along the longer side (capped by the
        full size); None before the browser has reported its camera."""
        camera = client.camera
        try:
            wxyz, position, fov = camera.wxyz.copy(), camera.position.copy(), camera.fov
            canvas = (camera.image_width, camera.image_height)
        except AssertionError:  # viser asserts until the browser has sent its camera once
            return None
        if min(canvas) <= 0 or fov <= 0:
            return None
        full = max(8, min(self.settings.max_resolution, max(canvas)))
        long_side = min(long_side, full)
        cameras = view_camera(c2w_from_viser(wxyz, position), fov, canvas[0] / canvas[1], long_side)
        with self._render_lock:
            start = time.perf_counter()
            rgb, depth = render_frame(self.model, cameras, 0, cancelled)
            seconds = time.perf_counter() - start
        rays_per_s = cameras.width * cameras.height / max(seconds, 1e-6)
        self._rays_per_s = rays_per_s if self._rays_per_s is None else 0.5 * (self._rays_per_s + rays_per_s)
        image = rgb if self._output.value == "RGB" else np.repeat(depth[..., None], 3, axis=-1)
        return Frame(client.client_id, cameras, image, long_side == full, seconds)

    def next_side(self, shown: int) -> int:
        """The long side of the next frame while the camera rests, ``shown`` being the one on screen: the full size,
        or on a slow scene the largest halving of it that renders within ``refine_step_seconds``, so the picture
        sharpens in steps instead of freezing."""
        side = self.settings.max_resolution
        while (side // 2 > max(shown, self.settings.preview_resolution) and self._rays_per_s is not None
               and 0.75 * side * side / self._rays_per_s > self.settings.refine_step_seconds):
            side //= 2
        return side

    def sent(self, frame: Frame) -> None:
        if frame.refined:
            self._status.content = (f"last frame {frame.cameras.width}x{frame.cameras.height} in "
                                    f"{1000 * frame.seconds:.0f} ms")
        for listener in self._listeners:
            listener(frame)

    # ---- browsers ------------------------------------------------------------------------------------------------
    def _connect(self, client) -> None:
        loop = _ClientLoop(self, client)
        self._loops[client.client_id] = loop
        client.camera.on_update(lambda _camera: loop.changed())
        loop.start()

    def _disconnect(self, client) -> None:
        loop = self._loops.pop(client.client_id, None)
        if loop is not None:
            loop.stop()

    def _rerender_all(self) -> None:
        for loop in list(self._loops.values()):
            loop.changed()

    def _move_all(self, c2w: torch.Tensor, fov: float) -> None:
        position, look_at, up = self._pose_for_viser(c2w)
        for client in self.server.get_clients().values():
            with client.atomic():
                client.camera.fov = fov
                client.camera.position = position
                client.camera.look_at = look_at
                client.camera.up_direction = up

    def _pose_for_viser(self, c2w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, look_at, up) for viser: the view direction of ``c2w``, orbiting at the target's distance about
        the world's up axis (z for bounded scenes, y for forward-facing ones)."""
        m = c2w.double().cpu()
        distance = float((self._target.double() - m[:, 3]).norm())
        return m[:, 3].numpy(), (m[:, 3] - distance * m[:, 2]).numpy(), self._up

    # ---- setup ---------------------------------------------------------------------------------------------------
    def _start_view(self) -> tuple[torch.Tensor, float]:
        """Where browsers start and "Reset view" returns: a little behind the first training camera (so its frustum
        is not in the way; at it in an unbounded capture, where behind it are walls), or a default view of the box."""
        if self.training is None or not len(self.training):
            return _default_view(self.model)
        c2w = self.training.c2w[0].float().cpu()
        fov = _vertical_fov(self.training.height, float(self.training.fy[0]))
        back = 0.0 if self.model.scene.contract else 0.4 * (c2w[:, 3] - self._target).norm()
        return torch.cat([c2w[:, :3], (c2w[:, 3] + back * c2w[:, 2])[:, None]], dim=1), fov

    def _set_initial_camera(self, c2w: torch.Tensor, fov: float) -> None:
        initial = self.server.initial_camera
        initial.position, initial.look_at, initial.up = self._pose_for_viser(c2w)
        initial.fov = fov

    def _build_panel(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Model"):
            gui.add_markdown(_describe(self.model, self.model_path))
        with gui.add_folder("Render"):
            self._output = gui.add_dropdown("Show", ("RGB", "Depth"), initial_value="RGB")
            resolution = gui.add_slider("Max resolution", min=64, max=2048, step=32,
                                        initial_value=self.settings.max_resolution,
                                        hint="long side of the full frame, in pixels")
            preview = gui.add_slider("Preview resolution", min=16, max=512, step=16,
                                     initial_value=self.settings.preview_resolution,
                                     hint="long side while the camera moves")
            self._status = gui.add_markdown("waiting for a browser")

            @resolution.on_update
            def _(_event) -> None:
                self.settings.max_resolution = int(resolution.value)
                self._rerender_all()

            @preview.on_update
            def _(_event) -> None:
                self.settings.preview_resolution = int(preview.value)

            self._output.on_update(lambda _event: self._rerender_all())
            home = gui.add_button("Reset view")
            home.on_click(lambda _event: self._move_all(*self._home))
        if self.training is None:
            with gui.add_folder("Training cameras"):
                gui.add_markdown("Start with `--data DATASET` to show them.")
            return
        self._add_training_cameras()

    def _add_training_cameras(self) -> None:
        cams = self.training
        fov = _vertical_fov(cams.height, float(cams.fy[0]))
        aspect = cams.width / cams.height
        extent = float((cams.c2w[:, :, 3] - cams.c2w[:, :, 3].mean(0)).norm(dim=-1).mean())
        frustums = []
        for i in range(len(cams)):
            wxyz, position = viser_from_c2w(cams.c2w[i])
            frustum = self.server.scene.add_camera_frustum(
                f"/training/{i:03d}", fov=fov, aspect=aspect, scale=0.05 * max(extent, 0.1), wxyz=wxyz,
                position=position, color=(60, 120, 220), thickness=1.5, thickness_units="screen")
            frustum.on_click(lambda _event, i=i: self._move_all(cams.c2w[i], fov))
            frustums.append(frustum)
        gui = self.server.gui
        with gui.add_folder("Training cameras"):
            gui.add_markdown(f"{len(cams)} views at {cams.width}x{cams.height}; click one to look through it.")
            show = gui.add_checkbox("Show", initial_value=True)
            view = gui.add_slider("View", min=0, max=len(cams) - 1, step=1, initial_value=0)
            go = gui.add_button("Go to view")

        @show.on_update
        def _(_event) -> None:
            for f in frustums:
                f.visible = show.value

        go.on_click(lambda _event: self._move_all(cams.c2w[int(view.value)], fov))


def _describe(model: LoadedModel, path: Path) -> str:
    """The panel's summary of the model file: size, kind, grid, tiers."""
    size = path.stat().st_size
    lines = [f"**{path.name}**", f"{size:,} bytes ({size / 2**20:.2f} MiB)"]
    compressed = model.extra.get("compressed")
    grid = "x".join(map(str, model.field.grid_size))
    field = model.field.field_type
    if compressed is None:
        lines.append(f"trained {field} checkpoint, grid {grid}")
    else:
        stats = compressed.get("stats", {})
        lines.append(f"compressed {field} .vqrf, grid {grid}")
        if "tiers" in stats:
            lines.append(f"sites: {describe_tiers(stats['tiers'])}")
        if "psnr" in stats:
            lines.append(f"recorded PSNR {stats['psnr']:.2f} dB")
    lines.append("forward-facing (NDC)" if model.scene.ndc else "bounded scene")
    return "  \n".join(lines)
