"""The browser's container decoder (vqrf/web/container.js) in headless Chromium: the same arrays as Python's
``decode_container`` for every coder and dtype and for real field files, and one-line errors (never a hang) for
truncated, corrupted and forged files.

The page and its scripts are answered by ``route`` (no server, no network); each file is decoded in its own module
Worker, which the page terminates after a time limit, so even a decoder stuck in a loop fails the test instead of
hanging it. Arrays are compared by SHA-256 of their bytes (computed in the browser with WebCrypto).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

import vqrf
from vqrf.compress.container import (DTYPES, MAGIC, CODERS, applicable_coders, decode_container, encode_container,
                                     section_sizes)
from vqrf.errors import VqrfError
from browser import chromium_path  # noqa: E402

WEB = Path(vqrf.__file__).parent / "web"
ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "http://127.0.0.1:8765"  # never contacted: every request is answered by the route below
TIMEOUT_MS = 10_000  # per file; the largest test file decodes in well under a second
TABLE_AT = len(MAGIC) + 6

# As tests/test_viewer.py launches it (software rendering, nothing fetched from outside).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# What container.js returns per dtype (float16 as the raw binary16 bits).
JS_ARRAY = {"bool": "Uint8Array", "uint8": "Uint8Array", "int8": "Int8Array", "int16": "Int16Array",
            "uint16": "Uint16Array", "int32": "Int32Array", "float16": "Uint16Array", "float32": "Float32Array"}

PAGE = """<!doctype html><meta charset="utf-8"><title>container decode test</title>
<script type="module">
// Decodes one file in a fresh module Worker; a worker that does not answer in time is terminated.
function decodeInWorker(url, timeoutMs) {
  return new Promise((resolve) => {
    const worker = new Worker("/decode-worker.js", { type: "module" });
    const finish = (result) => { clearTimeout(timer); worker.terminate(); resolve(result); };
    const timer = setTimeout(() => finish({ ok: false, name: "Timeout", message: `no answer in ${timeoutMs} ms` }),
                             timeoutMs);
    worker.onmessage = ({ data }) => finish(data);
    worker.onerror = (event) => finish({ ok: false, name: "WorkerError", message: String(event.message) });
    worker.postMessage({ url });
  });
}
window.decodeAll = async (urls, timeoutMs) => {
  const results = [];
  for (const url of urls) results.push(await decodeInWorker(url, timeoutMs));
  return results;
};
window.pageReady = true;
</script>"""

WORKER = """import { decodeContainer, halfToFloat32 } from "/web/container.js";
async function sha256(array) {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
self.onmessage = async ({ data: { url } }) => {
  try {
    const buffer = await (await fetch(url)).arrayBuffer();
    const start = performance.now();
    const { header, sections } = await decodeContainer(buffer, url.split("/").pop());
    const ms = performance.now() - start;
    const out = [];
    for (const [name, s] of Object.entries(sections)) {
      const row = { name, dtype: s.dtype, shape: s.shape, array: s.data.constructor.name, length: s.data.length,
                    sha256: await sha256(s.data) };
      if (s.dtype === "float16") row.float32 = await sha256(halfToFloat32(s.data));
      out.push(row);
    }
    postMessage({ ok: true, header, sections: out, ms });
  } catch (err) {
    postMessage({ ok: false, name: err.name, message: String(err.message), problem: err.problem ?? null });
  }
};
"""


class DecoderPage:
    """A headless Chromium page that decodes files put in ``files`` (served at /files/NAME) with container.js."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self.files: dict[str, bytes] = {}
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                                     args=CHROMIUM_FLAGS)
            context = self._browser.new_context()
            context.route(f"{ORIGIN}/**", self._answer)  # the context's routes also see the workers' requests
            self.page = context.new_page()
            self.page.goto(f"{ORIGIN}/index.html")
            self.page.wait_for_function("window.pageReady === true", timeout=10_000)
        except BaseException:
            self._pw.stop()
            raise

    def _answer(self, route) -> None:
        path = urlparse(route.request.url).path
        if path == "/index.html":
            route.fulfill(status=200, content_type="text/html", body=PAGE)
        elif path == "/decode-worker.js":
            route.fulfill(status=200, content_type="text/javascript", body=WORKER)
        elif path.startswith("/web/") and (WEB / path[5:]).is_file() and path.endswith(".js"):
            route.fulfill(status=200, content_type="text/javascript", body=(WEB / path[5:]).read_bytes())
        elif path.startswith("/files/") and path[7:] in self.files:
            route.fulfill(status=200, content_type="application/octet-stream", body=self.files[path[7:]])
        else:
            route.fulfill(status=404, body="not found")

    def decode(self, files: dict[str, bytes]) -> dict[str, dict]:
        """name -> the worker's answer: {ok, header, sections: [...], ms} or {ok: false, name, message, problem}."""
        self.files.update(files)
        urls = [f"/files/{name}" for name in files]
        results = self.page.evaluate("([urls, t]) => window.decodeAll(urls, t)", [urls, TIMEOUT_MS])
        return dict(zip(files, results))

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


@pytest.fixture(scope="module")
def browser():
    page = DecoderPage()
    yield page
    page.close()


def python_view(data: bytes) -> tuple[dict, list[dict]]:
    """(header, rows) in the worker's terms, from Python's decoder."""
    header, arrays = decode_container(data, "x")
    rows = []
    for name, a in arrays.items():
        little = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
        row = {"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "array": JS_ARRAY[a.dtype.name],
               "length": a.size, "sha256": hashlib.sha256(little.tobytes()).hexdigest()}
        if a.dtype.name == "float16":
            row["float32"] = hashlib.sha256(a.astype("<f4").tobytes()).hexdigest()
        rows.append(row)
    return header, rows


def assert_same_as_python(data: bytes, got: dict) -> None:
    assert got["ok"], f"{got['name']}: {got['message']}"
    header, rows = python_view(data)
    assert got["header"] == header
    assert [r["name"] for r in got["sections"]] == [r["name"] for r in rows]
    for js, py in zip(got["sections"], rows):
        assert js == py, py["name"]


def python_problem(data: bytes) -> str | None:
    """Python's one-line refusal of ``data`` (None when it decodes)."""
    try:
        decode_container(data, "x")
    except VqrfError as err:
        return err.problem
    return None


# ---------------------------------------------------------------------------------------------------------------
# Files


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values over the dtype's whole range (floats: any bit pattern, so NaN payloads, infinities and subnormals)."""
    if dtype == "bool":
        return rng.random(shape) < 0.3
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.integers(0, 256, (*shape, dt.itemsize), dtype=np.uint8).view(dt).reshape(shape)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dt)


def every_coder_file() -> bytes:
    """Every dtype in several shapes (0-d and empty included) under every coder that applies, plus sections that
    exercise the coders' corners: LZMA2 streams of several chunks and of stored chunks, all 65536 float16 bit
    patterns, ans alphabets of 1, 2 and 65536 symbols and at the ends of int32."""
    rng = np.random.default_rng(12)
    sections, coders = {}, {}
    for dtype in DTYPES:
        for shape in [(), (0,), (3, 0, 2), (1,), (13, 3), (2, 3, 4, 5), (7, 23)]:
            arr = random_array(dtype, shape, rng)
            for coder in applicable_coders(arr):
                name = f"{dtype}{list(shape)}.{coder}"
                sections[name], coders[name] = arr, [coder]
    small_ints = rng.integers(-4, 4, 400_000).astype(np.int8)
    skewed = np.minimum(rng.geometric(0.0005, 100_000) - 1, 65535).astype(np.uint16)
    skewed[:2] = [0, 65535]
    special = {
        "lzma.chunks": (small_ints, "lzma"),  # compresses to > 64 KiB: several LZMA chunks
        "lzma.stored": (rng.integers(0, 256, 150_000).astype(np.uint8), "lzma"),  # incompressible: stored chunks
        "lzma.text": (np.frombuffer(Path(__file__).read_bytes() * 4, np.uint8), "lzma"),  # long matches
        "halves.all": (np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256), "shuffle+lzma"),
        "float32.shuffled": (rng.standard_normal((300, 40)).astype(np.float32), "shuffle+lzma"),
        "ans.small": (small_ints, "ans"),
        "ans.wide": (skewed, "ans"),
        "ans.int32_min": (rng.integers(-2**31, -2**31 + 9, 5000).astype(np.int32), "ans"),
        "ans.int32_max": (rng.integers(2**31 - 300, 2**31, 5000).astype(np.int32), "ans"),
        "ans.one_value": (np.full((40, 3), -7, np.int16), "ans"),
        "ans.two_values": (np.array([0, 1] * 50 + [1] * 3, np.uint8), "ans"),
        "bool.zlib_long": (rng.random((91, 123, 17)) < 0.05, "zlib"),
        "__proto__": (np.arange(5, dtype=np.int32), "raw"),  # names are data, not JavaScript keys
        "ünïcødé 'name'": (np.arange(3, dtype=np.uint8), "raw"),
    }
    for name, (arr, coder) in special.items():
        sections[name], coders[name] = arr, [coder]
    header = {"format": "test", "grid": [8, 8, 8], "aabb": [[-1.5, -1, -1], [1, 1, 1.25]], "text": "ünïcødé ✓",
              "nested": {"list": [1, "two", None, True, 0.1], "empty": {}}, "big": 2**40}
    data = encode_container(header, sections, coders)
    assert {s["coder"] for s in section_sizes(data, "x")} == set(CODERS)
    return data


@pytest.fixture(scope="module")
def every_coder() -> bytes:
    return every_coder_file()


@pytest.fixture(scope="module")
def demo_vqrf(tmp_path_factory) -> bytes:
    """A field file from the real writer (TensoRF on the demo scene, a few steps, a quick VQ): int8 codebooks,
    float16 lines and MLP, camera sections, whatever coders the writer picks for them."""
    import torch

    from vqrf.checkpoint import load_model
    from vqrf.compress.codec import Precision, encode_field
    from vqrf.compress.vq import build_vq
    from vqrf.config import demo_preset
    from vqrf.data.synthetic import make_demo_scene
    from vqrf.train import train

    out = tmp_path_factory.mktemp("web_demo")
    cfg = dataclasses.replace(demo_preset().train, iters=4, batch_rays=256, n_voxel_init=16**3,
                              n_voxel_final=16**3, upsample_at=(), alpha_mask_at=(2,))
    train(make_demo_scene("train", n_views=4, size=16), dataclasses.replace(demo_preset(), train=cfg), out,
          progress=False)
    model = load_model(out / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(g.shape, generator=generator, dtype=torch.float64) for g in model.field.feature_grids()]
    state = build_vq(model.field, maps, 0.5, 0.99, lambda n: 16, progress=False)
    state.apply(model.field)
    return encode_field(model.field, state, model.occupancy, model.preset, model.scene,
                        Precision("int8", "fp16", "fp16"))


# The lego-cpu files the benchmarks write (benchmarks/out is not committed: skipped where they were not run).
BENCHMARK_FILES = sorted(ROOT.glob("benchmarks/out/lego_cpu*/*.vqrf"))


# ---------------------------------------------------------------------------------------------------------------
# Tests


def test_every_coder_and_dtype_decodes_as_in_python(browser, every_coder):
    got = browser.decode({"every.vqrf": every_coder})["every.vqrf"]
    assert_same_as_python(every_coder, got)


def test_real_field_file_decodes_as_in_python(browser, demo_vqrf):
    got = browser.decode({"demo.vqrf": demo_vqrf})["demo.vqrf"]
    assert_same_as_python(demo_vqrf, got)


@pytest.mark.skipif(not BENCHMARK_FILES, reason="no benchmarks/out/lego_cpu*/*.vqrf (run benchmarks/lego_cpu*.py)")
def test_lego_cpu_file_decodes_as_in_python(browser):
    files = {f"{p.parent.name}.vqrf": p.read_bytes() for p in BENCHMARK_FILES}
    for name, got in browser.decode(files).items():
        assert_same_as_python(files[name], got)


def _replace_table(data: bytes, edit) -> bytes:
    """``data`` with its table edited by ``edit(table) -> table`` and every CRC left valid."""
    n = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    table = json.loads(zlib.decompress(data[TABLE_AT:TABLE_AT + n]))
    payloads = data[TABLE_AT + n + 4:]
    raw = zlib.compress(json.dumps(edit(table)).encode())
    return data[:len(MAGIC) + 2] + struct.pack("<I", len(raw)) + raw + struct.pack("<I", zlib.crc32(raw)) + payloads


def _forged(data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Per coder, a few files whose payloads were altered and their CRCs recomputed: only the decoders can tell."""
    sizes = section_sizes(data, "x")
    n = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    starts = np.cumsum([TABLE_AT + n + 4] + [s["bytes"] for s in sizes])
    out = {}
    for coder in CODERS:
        candidates = [i for i, s in enumerate(sizes) if s["coder"] == coder and s["bytes"] > 12]
        for k in range(4):
            i = candidates[rng.integers(len(candidates))]
            body = bytearray(data)
            at = int(starts[i] + rng.integers(sizes[i]["bytes"]))
            body[at] ^= 1 << int(rng.integers(8))
            crc = zlib.crc32(body[starts[i]:starts[i + 1]])
            out[f"forged.{coder}.{k}.vqrf"] = _replace_table(
                bytes(body), lambda t, i=i, crc=crc: {**t, "sections": [{**s, "crc32": crc} if j == i else s
                                                                         for j, s in enumerate(t["sections"])]})
    return out


def test_bad_files_give_one_line_errors_and_never_hang(browser, every_coder):
    data = every_coder
    n = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    first_payload = TABLE_AT + n + 4
    bad = {f"truncated.{k}.vqrf": data[:k]
           for k in (0, 1, 5, 8, 13, 14, TABLE_AT + n // 2, TABLE_AT + n + 2, first_payload + 3, len(data) - 1)}
    for name, at in {"table": TABLE_AT + n // 2, "table_crc": TABLE_AT + n + 1, "payload": len(data) - 5,
                     "version": len(MAGIC)}.items():
        body = bytearray(data)
        body[at] ^= 0x10
        bad[f"corrupt.{name}.vqrf"] = bytes(body)
    bad["text_mode.vqrf"] = data.replace(b"\r\n", b"\n")
    bad["appended.vqrf"] = data + b"\0"
    bad["newer.vqrf"] = data[:len(MAGIC)] + struct.pack("<H", 2) + data[len(MAGIC) + 2:]
    bad["table_float_length.vqrf"] = _replace_table(
        data, lambda t: {**t, "sections": [{**t["sections"][0], "length": 1.5}] + t["sections"][1:]})
    bad["table_bad_dtype.vqrf"] = _replace_table(
        data, lambda t: {**t, "sections": [{**t["sections"][0], "dtype": "float64"}] + t["sections"][1:]})
    bad["table_huge_shape.vqrf"] = _replace_table(
        data, lambda t: {**t, "sections": [{**t["sections"][0], "shape": [2**20, 2**20]}] + t["sections"][1:]})
    forged = _forged(data, np.random.default_rng(7))
    results = browser.decode({**bad, **forged})

    for name, got in results.items():
        assert got.get("name") != "Timeout", f"{name}: the decoder did not answer"
        want = python_problem((bad | forged)[name])
        if want is None:  # a forged file that still decodes: then to the same arrays
            assert_same_as_python(forged[name], got)
            continue
        assert not got["ok"] and got["name"] == "VqrfError", f"{name}: {str(got)[:300]} (python: {want})"
        assert "\n" not in got["message"] and got["message"] == f"{name}: {got['problem']}"
        if name in bad:  # refused before any payload is decoded: worded exactly as the Python reader words it
            assert got["problem"] == want, name
        else:  # the same section refused; the decompressors' own words may differ
            assert got["problem"].split(": ")[0] == want.split(": ")[0], (name, got["problem"], want)
