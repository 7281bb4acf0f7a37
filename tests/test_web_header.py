"""The browser's header checks (vqrf/web/header_check.js) give Python's verdict on every file.

Hundreds of .vqrf files with mutated headers (the header fuzz benchmark's mutator, on its small base files), the
targeted bad values of tests/test_header_fuzz.py and a few bad sections are decoded by Python's ``decode_field``
and, in headless Chromium, by ``decodeContainer`` + ``checkHeader``; each must be accepted by both or refused by
both, the browser's refusal a one-line VqrfError. Files go to the page in batches (base64 in one evaluation), so the
whole test is a few page calls.
"""

from __future__ import annotations

import base64
import dataclasses
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

import vqrf
from vqrf.checkpoint import SceneInfo
from vqrf.compress import header_check
from vqrf.compress.codec import FIELD_VERSION, decode_field
from vqrf.compress.container import decode_container, encode_container
from vqrf.config import DVGOConfig, FieldConfig, Preset, TrainConfig
from vqrf.errors import VqrfError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz_header  # noqa: E402  (the header fuzz benchmark's base files and mutator)
from fuzz_container import split  # noqa: E402
from test_header_fuzz import BAD_VALUES, DELETE, edited  # noqa: E402
from test_web_decode import CHROMIUM_FLAGS, chromium_path  # noqa: E402
from fixtures_data import version_1_sections  # noqa: E402

WEB = Path(vqrf.__file__).parent / "web"
ORIGIN = "http://127.0.0.1:8766"  # never contacted: the route below answers every request
N_MUTATED = 480
SRC = "stranger.vqrf"

PAGE = """<!doctype html><meta charset="utf-8"><title>header check test</title>
<script type="module">
import { decodeContainer } from "/web/container.js";
import * as headerCheck from "/web/header_check.js";

function bytesOf(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// Per file: {ok: true, summary} or {ok: false, name, message, problem}.
window.verdicts = async (files, source) => {
  const out = [];
  for (const b64 of files) {
    try {
      const { header, sections } = await decodeContainer(bytesOf(b64), source);
      const checked = headerCheck.checkHeader(header, sections, source);
      out.push({ ok: true, summary: { version: checked.version, fieldType: checked.fieldType,
        distanceScale: checked.distanceScale, step: checked.step, maxSamples: checked.maxSamples,
        elements: checked.layout.elements, views: checked.views && checked.views.count } });
    } catch (err) {
      out.push({ ok: false, name: err.name, message: String(err.message), problem: err.problem ?? null });
    }
  }
  return out;
};
window.marchSteps = (cases) => cases.map(([aabb, grid, ratio, span]) => headerCheck.marchSteps(aabb, grid, ratio, span));
window.constants = () => JSON.parse(JSON.stringify({ SCHEMAS: headerCheck.SCHEMAS, LIMITS: headerCheck.LIMITS,
  FIELD_VERSION: headerCheck.FIELD_VERSION, FORMATS: headerCheck.FORMATS }));
window.pageReady = true;
</script>"""


class CheckerPage:
    """A headless Chromium page with container.js and header_check.js loaded."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                                     args=CHROMIUM_FLAGS)
            context = self._browser.new_context()
            context.route(f"{ORIGIN}/**", self._answer)
            self.page = context.new_page()
            self.page.goto(f"{ORIGIN}/index.html")
            self.page.wait_for_function("window.pageReady === true", timeout=10_000)
        except BaseException:
            self._pw.stop()
            raise

    @staticmethod
    def _answer(route) -> None:
        path = urlparse(route.request.url).path
        if path == "/index.html":
            route.fulfill(status=200, content_type="text/html", body=PAGE)
        elif path.startswith("/web/") and path.endswith(".js") and (WEB / path[5:]).is_file():
            route.fulfill(status=200, content_type="text/javascript", body=(WEB / path[5:]).read_bytes())
        else:
            route.fulfill(status=404, body="not found")

    def verdicts(self, files: list[bytes]) -> list[dict]:
        encoded = [base64.b64encode(data).decode() for data in files]
        return self.page.evaluate("([files, source]) => window.verdicts(files, source)", [encoded, SRC])

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


@pytest.fixture(scope="module")
def browser():
    page = CheckerPage()
    yield page
    page.close()


@pytest.fixture(scope="module")
def bases() -> dict[str, bytes]:
    return fuzz_header.small_files()


def python_verdict(data: bytes) -> str | None:
    """Python's refusal of ``data`` (its one-line problem), or None when it decodes."""
    try:
        decode_field(data, SRC)
    except VqrfError as err:
        return err.problem
    return None


def compare(browser: CheckerPage, files: dict[str, bytes]) -> dict[str, tuple[str | None, dict]]:
    """Both verdicts per file; asserts they agree and that every browser refusal is a one-line VqrfError."""
    answers = browser.verdicts(list(files.values()))
    both = {label: (python_verdict(data), js) for (label, data), js in zip(files.items(), answers)}
    disagree = [f"{label}: python {py!r}, browser {js.get('message') if not js['ok'] else 'accepts'}"
                for label, (py, js) in both.items() if (py is None) != js["ok"]]
    assert not disagree, f"{len(disagree)} of {len(files)} verdicts differ:\n" + "\n".join(disagree[:20])
    for label, (_, js) in both.items():
        if not js["ok"]:
            assert js["name"] == "VqrfError" and js["problem"] and "\n" not in js["message"], (label, js)
            assert js["message"].startswith(f"{SRC}: "), (label, js)
    return both


def test_constants_match_python(browser):
    """The limits, versions and typed keys are Python's: header_check.py's constants and the dataclasses."""
    got = browser.page.evaluate("() => window.constants()")
    limits = {name: getattr(header_check, name) for name in got["LIMITS"]}
    limits["STEP_RATIO"] = list(limits["STEP_RATIO"])
    assert got["LIMITS"] == limits
    assert got["FIELD_VERSION"] == FIELD_VERSION and got["FORMATS"] == {"vqrf-tensorf-vq": [1, 1],
                                                                         "vqrf-field-vq": [2, FIELD_VERSION]}
    kinds = {"bool": "bool", "int": "int", "float": "float", "str": "str", "tuple[int, int, int]": "int3",
             "tuple[int, ...]": "ints"}
    for name, cls in {"preset": Preset, "tensorf": FieldConfig, "dvgo": DVGOConfig, "train": TrainConfig,
                      "scene": SceneInfo}.items():
        expected = {}
        for f in dataclasses.fields(cls):
            if f.type not in kinds:  # nested objects (a preset's field, train, coarse; the scene's views)
                continue
            expected[f.name] = [kinds[f.type]]
            if f.default is not dataclasses.MISSING:
                expected[f.name].append(list(f.default) if isinstance(f.default, tuple) else f.default)
            elif f.default_factory is not dataclasses.MISSING:
                expected[f.name].append(f.default_factory())
        assert got["SCHEMAS"][name] == expected, name


def test_base_files_are_accepted_with_python_values(browser, bases):
    """The unmutated files pass, and the rendering values the browser derives are the decoder's."""
    answers = browser.verdicts(list(bases.values()))
    for (name, data), js in zip(bases.items(), answers):
        assert js["ok"], (name, js)
        model = decode_field(data, SRC)
        settings = model.render_settings()
        summary = js["summary"]
        assert summary["maxSamples"] == settings.max_samples, name
        assert summary["step"] == pytest.approx(settings.step, rel=1e-6), name
        assert summary["distanceScale"] == pytest.approx(model.field.distance_scale, rel=1e-7), name
        assert summary["elements"] == model.field.n_parameters(), name
        views = model.scene.views
        assert summary["views"] == (None if views is None else len(views.cameras)), name


def test_step_and_samples_per_ray_are_the_decoders_to_the_bit(browser):
    """The samples-per-ray cap is a float32 computation: the browser repeats torch's, for random boxes and grids."""
    import torch

    from vqrf.fields.base import Field
    from vqrf.render.volume import RenderSettings

    class Box:  # what RenderSettings.for_field reads of a field
        voxel_size, step_size = Field.voxel_size, Field.step_size

        def __init__(self, aabb: torch.Tensor, grid: list[int]):
            self.aabb, self.grid_size = aabb, grid

    rng = np.random.default_rng(7)
    cases, expected = [], []
    for _ in range(3000):
        lo = rng.uniform(-1e3, 1e3, 3)
        aabb = torch.tensor(np.stack([lo, lo + 10 ** rng.uniform(-4, 4, 3)]), dtype=torch.float32)
        grid, ratio = rng.integers(2, 4097, 3).tolist(), float(10 ** rng.uniform(-2, 1.8))
        near, far = sorted(rng.uniform(0, 1, 2).tolist())
        depth_steps = bool(rng.integers(2))  # NDC with ndc_depth_steps: z-voxel steps over [near, far]
        settings = RenderSettings.for_field(Box(aabb, grid), near, far, depth_steps, True, ratio,
                                            ndc_depth_steps=depth_steps)
        cases.append([aabb.flatten().tolist(), grid, ratio, far - near if depth_steps else None])
        expected.append({"step": settings.step, "diagonal": float((aabb[1] - aabb[0]).norm()),
                         "maxSamples": settings.max_samples})
    got = browser.page.evaluate("(cases) => window.marchSteps(cases)", cases)
    wrong = [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, e.g. {wrong[:3]}"


def test_mutated_headers_get_python_verdicts(browser, bases):
    rng = np.random.default_rng(2024)
    names = sorted(bases)
    headers = {name: split(bases[name])[0]["header"] for name in names}
    files = {}
    for i in range(N_MUTATED):
        base = names[i % len(names)]
        header, edits = fuzz_header.mutate_header(headers[base], rng)
        files[f"{i} {base}: {'; '.join(edits)}"] = fuzz_header.with_header(bases[base], header)
    both = compare(browser, files)
    accepted = sum(py is None for py, _ in both.values())
    assert 40 < accepted < N_MUTATED - 40, accepted  # both verdicts are exercised


def test_targeted_bad_values_are_refused_by_both(browser, bases):
    """tests/test_header_fuzz.py's bad values (each naming its key in the browser's message too), then values that
    older writers left out or wrote differently, which both accept."""
    files = {f"{base}:{path}={value!r}": edited(bases[base], path, value) for base, path, value, _ in BAD_VALUES}
    both = compare(browser, files)
    for (label, (py, js)), (_, _, _, match) in zip(both.items(), BAD_VALUES):
        assert py is not None and not js["ok"], label
        assert any(part in js["problem"] for part in match.split("|")), (label, js["problem"])
    accepted = {
        "version 2": edited(bases["tensorf"], "version", 2),
        "no scene.contract": edited(bases["tensorf"], "scene.contract", DELETE),
        "no masks_shrink_only": edited(bases["dvgo"], "preset.train.masks_shrink_only", DELETE),
        "no coarse": edited(bases["dvgo"], "preset.coarse", DELETE),
        "no stats": edited(bases["tensorf"], "stats", DELETE),
        "integer near": edited(bases["tensorf"], "scene.near", 2),
        "integer box": edited(bases["tensorf"], "aabb", [[-1, -1, -1], [1, 1, 1]]),
        "no views": edited(bases["tensorf-ndc"], "views", DELETE),
    }
    assert all(py is None for py, _ in compare(browser, accepted).values())


def test_integers_written_as_floats_and_bad_sections(browser, bases):
    """What JSON.parse alone cannot see (2.0 where an integer belongs) and the checks against the sections."""
    header, sections = decode_container(bases["dvgo"], SRC)

    def with_sections(**changed: Any) -> bytes:
        return encode_container(header, {**sections, **changed})

    nan_scale = sections["voxels.k0.codebook.scale"].copy()
    nan_scale[1] = np.nan
    huge = split(bases["tensorf"])[0]["header"]
    huge["grid"] = [4096, 4096, 4096]
    huge["preset"]["field"].update(density_comps=[1024] * 3, app_comps=[1024] * 3)
    keep = sections["voxels.keep_mask"].copy()
    keep[sections["voxels.vq_mask"]] = True
    # label -> (file, what the browser's message says: these files may be wrong in more than one way)
    cases = {
        "grid of floats": (edited(bases["tensorf"], "grid", [10.0, 9, 8]), "grid must be a list of 3 integers"),
        "float mlp_width": (edited(bases["tensorf"], "preset.field.mlp_width", 16.0), "mlp_width must be an integer"),
        "float views.width": (edited(bases["tensorf"], "views.width", 32.0), "stored cameras: image size"),
        "float codebook_levels": (edited(bases["tensorf"], "precision.codebook_levels", 64.0),
                                  "codebook_levels must be an integer"),
        "NaN in a float section": (with_sections(**{"voxels.k0.codebook.scale": nan_scale}), "NaN or infinite"),
        "empty occupancy axis": (with_sections(occupancy=np.zeros((4, 0, 3), bool)), "3 axes of 1 to 4096"),
        "occupancy not bool": (with_sections(occupancy=sections["occupancy"].astype(np.uint8)),
                               "'occupancy' is uint8"),
        "missing buffer": (encode_container(header, {k: v for k, v in sections.items() if k != "buffer.act_shift"}),
                           "'buffer.act_shift' is missing"),
        "kept and quantised": (with_sections(**{"voxels.keep_mask": keep}), "both kept and vector-quantised"),
        "code beyond the codebook": (with_sections(**{"voxels.k0.indices": sections["voxels.k0.indices"] + 100}),
                                     "beyond the"),
        "huge field": (fuzz_header.with_header(bases["tensorf"], huge), "would hold"),
        "zero voxel size": (with_sections(**{"buffer.voxel_size_base": np.zeros((), np.float32)}), "distance scale"),
    }
    both = compare(browser, {label: data for label, (data, _) in cases.items()})
    for label, (py, js) in both.items():
        assert py is not None and cases[label][1] in js["problem"], (label, js["problem"])


def test_cameras_and_the_samples_per_ray(browser, bases):
    """Stored cameras' values the mutator rarely reaches, and the samples-per-ray cap on either side of it (a long
    thin box with many grid points along it: the only way to exceed it, as the mutator cannot change the grid)."""
    refused = {
        "depth bounds reversed": edited(bases["tensorf-ndc"], "views.depth_bounds", [10.0, 1.0]),
        "zero near bound": edited(bases["tensorf-ndc"], "views.depth_bounds", [0, 10.0]),
        "up not unit": edited(bases["tensorf"], "views.up", [0.0, 0.0, 2.0]),
        "zero focal": edited(bases["tensorf"], "views.intrinsics", [0.0, 30.0, 16.0, 12.0]),
        "focal zero in float32": edited(bases["tensorf"], "views.intrinsics", [1e-50, 30.0, 16.0, 12.0]),
        "huge intrinsic": edited(bases["tensorf"], "views.intrinsics", [30.0, 30.0, 1e30, 12.0]),
        "no intrinsics": edited(bases["tensorf"], "views.intrinsics", DELETE),
        "views not an object": edited(bases["tensorf"], "views", [1, 2]),
    }
    assert all(py is not None for py, _ in compare(browser, refused).values())
    long = long_thin_file()
    # diagonal 1000, mean voxel 0.75: 0.0406 gives 32,840 samples, 0.041 gives 32,520 (the cap is 32,768).
    both = compare(browser, {"over": edited(long, "preset.train.step_ratio", 0.0406),
                             "under": edited(long, "preset.train.step_ratio", 0.041)})
    assert "samples across the box" in both["over"][1]["problem"] and both["under"][0] is None


def test_version_1_files(browser, bases):
    """Version-1 files (TensoRF only, some sections named differently) are read under their version-2 names."""
    header, sections = decode_container(bases["tensorf"], SRC)
    v1_sections = version_1_sections(sections)
    v1 = {k: v for k, v in header.items() if k not in ("field_type", "views")}
    v1.update(format="vqrf-tensorf-vq", version=1)
    v1["preset"] = {k: v for k, v in header["preset"].items() if k not in ("field_type", "coarse")}
    files = {
        "version 1": encode_container(v1, v1_sections),
        "version 1, a line missing": encode_container(v1, {k: v for k, v in v1_sections.items() if k != "line1.app"}),
        "version 1 under the new format": encode_container({**v1, "format": "vqrf-field-vq"}, v1_sections),
        "version 2 under the old format": encode_container({**v1, "version": 2}, v1_sections),
    }
    both = compare(browser, files)
    assert [py is None for py, _ in both.values()] == [True, False, False, False]


def long_thin_file() -> bytes:
    """A tiny TensoRF field over a 1000 x 1 x 1 box with 4000 grid points along it."""
    import torch

    from vqrf.compress.codec import Precision, encode_field
    from vqrf.compress.vq import build_vq
    from vqrf.fields import create_field
    from vqrf.render.occupancy import OccupancyGrid

    torch.manual_seed(0)
    cfg = FieldConfig(density_comps=(1, 1, 1), app_comps=(1, 1, 1), app_dim=1, mlp_width=4, view_pe=0, fea_pe=0)
    aabb = torch.tensor([[0.0, 0.0, 0.0], [1000.0, 1.0, 1.0]])
    field = create_field(cfg, aabb, [4000, 2, 2])
    state = build_vq(field, [torch.rand(g.shape, dtype=torch.float64) for g in field.feature_grids()], 0.5, 0.99,
                     lambda n: 4, progress=False)
    state.apply(field)
    preset = Preset("long", "blender", field=cfg, train=TrainConfig(step_ratio=0.5))
    return encode_field(field, state, OccupancyGrid.full(aabb), preset, SceneInfo(0.0, 2000.0, False, True),
                        Precision("int8", "int8", "fp16"))
