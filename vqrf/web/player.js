// The player page: fetches a .vqrf, decodes it in the browser (container.js, then field.js), renders it with WebGL2
// (renderer.js) and lets the viewer move around it.
//
// The page tells a test where it stands on <body>: data-state is "loading", then "ready" once the first complete
// frame is on screen (a small one: frames start small and sharpen while the view rests), or "error" with the
// one-line message in data-error; data-frame, data-frame-ms, data-frames and data-sharp ("true" once the frame on
// screen has the canvas' resolution) describe the latest frame. window.vqrfPlayer.renderCamera renders a fixed
// camera and resolves to its pixels.

import { buildField } from './field.js';
import { RenderCancelled, Renderer } from './renderer.js';

/** After the last input, the view counts as resting (and starts to sharpen) after this long. */
const REST_MS = 250;
/** A frame while the camera moves aims to take this long: its size follows the measured speed. */
const PREVIEW_MS = 50;
/** Sharpening stops at the size whose frame would take longer than this (software renderers). */
const MAX_FRAME_MS = 60_000;
const MIN_SIDE = 32;
const MAX_SIDE = 2048;
const DEFAULT_FOV = (50 * Math.PI) / 180;
/** Forward-facing scenes are recentred so that the content starts about a unit ahead; orbit a point beyond it. */
const FORWARD_FOCUS = 2;

// ---- small vector helpers (3-vectors as arrays) ---------------------------------------------------------------------

const add = (a, b) => a.map((v, i) => v + b[i]);
const sub = (a, b) => a.map((v, i) => v - b[i]);
const scale = (a, s) => a.map((v) => v * s);
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a) => Math.hypot(a[0], a[1], a[2]);
const unit = (a) => scale(a, 1 / (norm(a) || 1));

/** `v` turned by `angle` radians about the unit `axis` (Rodrigues). */
function rotate(v, axis, angle) {
  const c = Math.cos(angle);
  const s = Math.sin(angle);
  return add(add(scale(v, c), scale(cross(axis, v), s)), scale(axis, dot(axis, v) * (1 - c)));
}

/**
 * A camera pose: its axes (OpenGL: x right, y up, looking along -z, so "back" is +z) and its centre.
 * @typedef {{right: number[], up: number[], back: number[], eye: number[]}} Pose
 */

/** vqrf/render/paths.py look_at: the pose at `eye` looking at `target`, `up` as the world's up. */
function lookAt(eye, target, up) {
  const back = unit(sub(eye, target));
  const right = unit(cross(up, back));
  return { right, up: cross(back, right), back, eye };
}

/** @param {Pose} p @returns {number[][]} c2w, 3 rows of 4 */
function c2wOf(p) {
  return [0, 1, 2].map((i) => [p.right[i], p.up[i], p.back[i], p.eye[i]]);
}

/** @param {number[][]} m c2w rows @returns {Pose} */
function poseOf(m) {
  return { right: m.map((r) => r[0]), up: m.map((r) => r[1]), back: m.map((r) => r[2]), eye: m.map((r) => r[3]) };
}

// ---- the player -----------------------------------------------------------------------------------------------------

/** The one line a failure shows on the page. */
function oneLine(error) {
  const text = error instanceof Error ? error.message : String(error);
  return (text.split('\n')[0] || 'unknown error').trim();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Player {
  /** @param {Document} doc */
  constructor(doc = document) {
    this.doc = doc;
    this.body = doc.body;
    this.canvas = doc.getElementById('view');
    this.el = Object.fromEntries(['title', 'facts', 'timing', 'rgb', 'depth', 'reset', 'cameras', 'message']
      .map((id) => [id, doc.getElementById(id)]));
    this.mode = 'rgb';
    this.body.dataset.mode = 'rgb';
    this.renderer = null;
    this.dirty = false; // the view changed since the last frame started
    this.lastInput = 0;
    this.shown = null; // {width, height} of the frame on screen, or null
    this.msPerPixel = null;
    this.pumping = false;
    this.external = 0; // renderCamera calls in flight: the interactive loop keeps out of their way
    this.setState('loading');
  }

  setState(state, message = '') {
    this.body.dataset.state = state;
    if (state === 'error') {
      this.body.dataset.error = message;
      this.el.message.textContent = message;
    } else {
      delete this.body.dataset.error;
      if (state === 'loading') this.el.message.textContent = message || 'loading…';
    }
  }

  fail(error) {
    if (error instanceof RenderCancelled) return;
    console.error(error);
    this.setState('error', oneLine(error));
  }

  /**
   * Fetch, decode and show a .vqrf file.
   * @param {string} url
   */
  async load(url) {
    const name = decodeURIComponent(url.split('/').pop().split('?')[0]) || url;
    try {
      this.setState('loading', `loading ${name}…`);
      let response;
      try {
        response = await fetch(url);
      } catch (e) {
        throw new Error(`${name}: could not be fetched (${oneLine(e)})`);
      }
      if (!response.ok) {
        throw new Error(`${name}: could not be fetched (HTTP ${response.status} ${response.statusText})`);
      }
      const bytes = await response.arrayBuffer();
      this.setState('loading', `decoding ${name}…`);
      const { decodeContainer } = await import('./container.js');
      const container = await decodeContainer(bytes, name);
      await this.open(container, { name, bytes: bytes.byteLength });
    } catch (e) {
      this.fail(e);
    }
  }

  /**
   * Show a decoded container (what decodeContainer returns).
   * @param {import('./field.js').Container} container
   * @param {{name: string, bytes: number}} file  for the panel
   */
  async open(container, file) {
    try {
      const field = buildField(container, file.name);
      const gl = this.canvas.getContext('webgl2', { antialias: false, depth: false, preserveDrawingBuffer: true });
      if (!gl) throw new Error('this browser has no WebGL2 (needed to render the field)');
      this.canvas.addEventListener('webglcontextlost', (e) => {
        e.preventDefault();
        this.fail(new Error('the WebGL context was lost (the GPU was reset or ran out of memory)'));
      });
      this.field = field;
      const renderer = new Renderer(gl, field);
      this.describe(field, file);
      this.setupView(field);
      this.bindInput();
      await renderer.warmUp();
      this.renderer = renderer;
      new ResizeObserver(() => this.changed(false)).observe(this.canvas);
      this.changed(false);
    } catch (e) {
      this.fail(e);
    }
  }

  /** The panel's facts about the file. */
  describe(field, file) {
    const kind = field.type === 'dvgo' ? 'DVGO' : 'TensoRF-VM';
    const { ndc, contract } = field.scene;
    const space = ndc ? 'forward-facing (NDC)' : contract ? 'unbounded (contracted)' : 'bounded';
    const mib = (file.bytes / 2 ** 20).toFixed(2);
    this.el.title.textContent = file.name;
    this.doc.title = `${file.name} · vqrf player`;
    this.el.facts.textContent = `${file.bytes.toLocaleString('en')} bytes (${mib} MiB) · ${kind} ` +
      `${field.grid.join('×')} · ${space}`;
    this.body.dataset.bytes = String(file.bytes);
  }

  // ---- the view -------------------------------------------------------------------------------------------------

  /** The start view, orbit centre and up direction, from the training cameras when the file has them. */
  setupView(field) {
    const { scene, aabb, views } = field;
    this.worldUp = views ? views.up : scene.ndc ? [0, 1, 0] : [0, 0, 1];
    if (scene.ndc) this.centre = [0, 0, -FORWARD_FOCUS];
    else if (scene.contract) this.centre = [0, 0, 0];
    else this.centre = aabb.min.map((v, i) => 0.5 * (v + aabb.max[i]));
    if (views) {
      // A little behind the first training camera, so the view opens on what it saw (in a capture, at it: behind
      // it are walls), as the Python viewer starts.
      const first = views.cameras[0];
      const pose = poseOf(first.c2w);
      const back = scene.contract ? 0 : 0.4 * norm(sub(pose.eye, this.centre));
      pose.eye = add(pose.eye, scale(pose.back, back));
      this.home = { pose, fov: 2 * Math.atan((0.5 * views.height) / first.fy), intrinsics: null };
      const select = this.el.cameras;
      select.replaceChildren(new Option(`training cameras (${views.cameras.length})`, ''),
        ...views.cameras.map((_, i) => new Option(`camera ${i}`, String(i))));
      select.hidden = false;
      select.onchange = () => {
        if (select.value !== '') this.jumpTo(Number(select.value));
      };
    } else if (scene.ndc) {
      const pose = { right: [1, 0, 0], up: [0, 1, 0], back: [0, 0, 1], eye: [0, 0, 0] };
      this.home = { pose, fov: 2 * Math.atan((0.5 * scene.height) / scene.ndcFocal), intrinsics: null };
    } else {
      const half = aabb.max.map((v, i) => 0.5 * (v - aabb.min[i]));
      const distance = scene.contract ? 1 : 1.6 * norm(half);
      const a = Math.PI / 6;
      const eye = add(this.centre, scale([Math.cos(a), 0, Math.sin(a)], distance));
      this.home = { pose: lookAt(eye, this.centre, [0, 0, 1]), fov: DEFAULT_FOV, intrinsics: null };
    }
    this.reset();
  }

  /** Back to the start view. */
  reset() {
    this.setView(structuredClone(this.home));
    if (this.el.cameras) this.el.cameras.value = '';
  }

  /** Exactly training camera `i` (its pose and intrinsics, scaled to the canvas). */
  jumpTo(i) {
    const { views } = this.field;
    const c = views.cameras[i];
    this.setView({ pose: poseOf(c.c2w), fov: 2 * Math.atan((0.5 * views.height) / c.fy),
                   intrinsics: { fx: c.fx, fy: c.fy, cx: c.cx, cy: c.cy, width: views.width, height: views.height } });
  }

  /** Take `view` ({pose, fov, intrinsics}); the orbit target is straight ahead, as far as the scene's centre. */
  setView(view) {
    const distance = Math.max(norm(sub(view.pose.eye, this.centre)), 1e-3);
    this.view = { ...view, target: sub(view.pose.eye, scale(view.pose.back, distance)) };
    this.changed(true);
  }

  /** The camera of the current view at `width` x `height` pixels. */
  camera(width, height) {
    const { pose, fov, intrinsics } = this.view;
    let k;
    if (intrinsics) { // a training camera: its own focal lengths and principal point, scaled to this height
      const s = height / intrinsics.height;
      k = { fx: intrinsics.fx * s, fy: intrinsics.fy * s, cx: width / 2 + (intrinsics.cx - intrinsics.width / 2) * s,
            cy: height / 2 + (intrinsics.cy - intrinsics.height / 2) * s };
    } else {
      const f = (0.5 * height) / Math.tan(0.5 * fov);
      k = { fx: f, fy: f, cx: width / 2, cy: height / 2 };
    }
    return { c2w: c2wOf(pose), ...k, width, height };
  }

  /** Turn the camera about the target: `yaw` about the world's up, `pitch` about the camera's right axis. */
  orbit(yaw, pitch) {
    const { pose, target } = this.view;
    const turn = (axis, angle) => {
      const offset = rotate(sub(pose.eye, target), axis, angle);
      return { right: rotate(pose.right, axis, angle), up: rotate(pose.up, axis, angle),
               back: rotate(pose.back, axis, angle), eye: add(target, offset) };
    };
    let next = turn(unit(this.worldUp), yaw);
    const pitched = turn(next.right, pitch);
    if (Math.abs(dot(pitched.back, unit(this.worldUp))) < 0.995) next = pitched; // never over the pole
    this.view.pose = next;
    this.changed(true);
  }

  /** Move camera and target in the image plane by (dx, dy) canvas pixels. */
  pan(dx, dy) {
    const { pose, target, fov } = this.view;
    const distance = norm(sub(pose.eye, target));
    const perPixel = (2 * distance * Math.tan(0.5 * fov)) / Math.max(this.canvas.clientHeight, 1);
    const shift = add(scale(pose.right, -dx * perPixel), scale(pose.up, dy * perPixel));
    pose.eye = add(pose.eye, shift);
    this.view.target = add(target, shift);
    this.changed(true);
  }

  /** Move toward (factor < 1) or away from the target. */
  zoom(factor) {
    const { pose, target } = this.view;
    const offset = sub(pose.eye, target);
    const distance = Math.max(norm(offset) * factor, 1e-4);
    pose.eye = add(target, scale(unit(offset), distance));
    this.changed(true);
  }

  setMode(mode) {
    this.mode = mode;
    this.body.dataset.mode = mode;
    this.el.rgb.setAttribute('aria-pressed', String(mode === 'rgb'));
    this.el.depth.setAttribute('aria-pressed', String(mode === 'depth'));
    this.changed(false);
  }

  bindInput() {
    const canvas = this.canvas;
    const pointers = new Map();
    let pinch = null;
    canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    canvas.addEventListener('pointerdown', (e) => {
      canvas.setPointerCapture(e.pointerId);
      pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.button === 1 || e.shiftKey });
      pinch = null;
    });
    const up = (e) => {
      pointers.delete(e.pointerId);
      pinch = null;
    };
    canvas.addEventListener('pointerup', up);
    canvas.addEventListener('pointercancel', up);
    canvas.addEventListener('pointermove', (e) => {
      const p = pointers.get(e.pointerId);
      if (!p) return;
      const dx = e.clientX - p.x;
      const dy = e.clientY - p.y;
      p.x = e.clientX;
      p.y = e.clientY;
      if (pointers.size === 2) { // two fingers: pinch to zoom, move together to pan
        const [a, b] = [...pointers.values()];
        const spread = Math.hypot(a.x - b.x, a.y - b.y);
        if (pinch) this.zoom(pinch / Math.max(spread, 1));
        pinch = spread;
        this.pan(dx / 2, dy / 2);
      } else if (p.pan) {
        this.pan(dx, dy);
      } else {
        const perPixel = Math.PI / Math.max(canvas.clientHeight, 1);
        this.orbit(-dx * perPixel, -dy * perPixel);
      }
    });
    canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      const lines = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
      this.zoom(Math.exp(Math.max(-1, Math.min(1, e.deltaY * lines * 0.002))));
    }, { passive: false });
    this.el.rgb.addEventListener('click', () => this.setMode('rgb'));
    this.el.depth.addEventListener('click', () => this.setMode('depth'));
    this.el.reset.addEventListener('click', () => this.reset());
    this.doc.addEventListener('keydown', (e) => {
      if (e.target instanceof HTMLSelectElement) return;
      if (e.key === 'r') this.reset();
      else if (e.key === 'd') this.setMode('depth');
      else if (e.key === 'c') this.setMode('rgb');
    });
  }

  // ---- frames ---------------------------------------------------------------------------------------------------

  /** The view or the canvas changed; `moving`: because of input (render small until it rests). */
  changed(moving) {
    if (moving) this.lastInput = performance.now();
    this.dirty = true;
    this.shown = null;
    // A frame of the old view (perhaps a slow sharp one) stops at its next band, unless a renderCamera call owns it.
    if (this.renderer && !this.external) this.renderer.cancel();
    this.pump();
  }

  /** Canvas pixels (the sharpest frame worth rendering). */
  fullSize() {
    const dpr = window.devicePixelRatio || 1;
    let width = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    let height = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    const s = Math.min(1, MAX_SIDE / Math.max(width, height));
    width = Math.max(1, Math.round(width * s));
    height = Math.max(1, Math.round(height * s));
    return { width, height };
  }

  /** The canvas' aspect at `pixels` pixels (at least MIN_SIDE on the short side, at most the full size). */
  sized(pixels) {
    const full = this.fullSize();
    const share = Math.sqrt(Math.max(pixels, 1) / (full.width * full.height));
    const f = Math.min(1, Math.max(share, MIN_SIDE / Math.min(full.width, full.height)));
    return { width: Math.max(1, Math.round(full.width * f)), height: Math.max(1, Math.round(full.height * f)) };
  }

  /** The next frame to draw, or null when the view is as sharp as it gets. */
  nextSize() {
    const full = this.fullSize();
    const known = this.msPerPixel !== null;
    if (this.dirty) { // a changed view: small while moving (or before the speed is known), else sharp at once
      const resting = performance.now() - this.lastInput > REST_MS;
      if (known && resting && full.width * full.height * this.msPerPixel <= PREVIEW_MS) return full;
      return this.sized(known ? PREVIEW_MS / this.msPerPixel : 64 * 64);
    }
    if (!this.shown || this.shown.width >= full.width) return null;
    const next = this.sized(this.shown.width * this.shown.height * 4); // twice the side
    if (known && next.width * next.height * this.msPerPixel > MAX_FRAME_MS) return null;
    return next;
  }

  /** Draw frames until the view is sharp; one loop at a time, idle while renderCamera has the renderer. */
  async pump() {
    if (this.pumping || !this.renderer) return;
    this.pumping = true;
    try {
      for (;;) {
        if (this.external) break;
        if (!this.dirty && this.shown && performance.now() - this.lastInput < REST_MS) {
          await sleep(REST_MS - (performance.now() - this.lastInput)); // sharpen only once the view rests
          continue;
        }
        const size = this.nextSize();
        if (!size) break;
        this.dirty = false;
        const camera = this.camera(size.width, size.height);
        let ms;
        try {
          ms = await this.renderer.render(camera, this.mode);
        } catch (e) {
          if (e instanceof RenderCancelled) continue;
          throw e;
        }
        if (this.dirty) continue; // the view moved meanwhile: this frame is stale
        this.show(size, ms);
      }
    } catch (e) {
      this.fail(e);
    } finally {
      this.pumping = false;
    }
  }

  /** Put the frame just rendered on the canvas and report its time. */
  show(size, ms) {
    this.msPerPixel = ms / (size.width * size.height);
    const full = this.fullSize();
    if (this.canvas.width !== full.width || this.canvas.height !== full.height) {
      this.canvas.width = full.width;
      this.canvas.height = full.height;
    }
    this.renderer.present();
    this.shown = size;
    this.el.timing.textContent = `frame ${size.width}×${size.height} in ${ms.toFixed(0)} ms` +
      (size.width < full.width ? ' · sharpening…' : '');
    this.body.dataset.frame = `${size.width}x${size.height}`;
    this.body.dataset.frameMs = ms.toFixed(1);
    this.body.dataset.frames = String(Number(this.body.dataset.frames || 0) + 1);
    this.body.dataset.sharp = String(size.width >= full.width); // at the canvas' resolution: nothing left to refine
    if (this.body.dataset.state === 'loading') this.setState('ready');
  }

  /**
   * Render a fixed camera (the project's convention: OpenGL c2w, pixel centres at +0.5) and return its pixels.
   * @param {number[][]} c2w  3 rows of 4
   * @returns {Promise<Uint8Array>} RGBA, rows top to bottom; in depth mode grey levels of render_frame's closeness
   */
  renderCamera(c2w, fx, fy, cx, cy, width, height, mode = 'rgb') {
    // One at a time (each would cancel the other's tiles); the interactive loop waits until none is pending.
    this.external++;
    const run = async () => {
      if (!this.renderer) throw new Error(this.body.dataset.error || 'no field is loaded');
      const camera = { c2w, fx, fy, cx, cy, width, height };
      for (;;) {
        try {
          await this.renderer.render(camera, mode);
          return this.renderer.readPixels();
        } catch (e) {
          if (!(e instanceof RenderCancelled)) throw e; // the interactive loop's frame, cancelled: ours again
        }
      }
    };
    const result = (this.queue || Promise.resolve()).then(run);
    this.queue = result.catch(() => {}).finally(() => {
      this.external--;
      this.pump(); // the view may still want sharpening
    });
    return result;
  }
}

/** The page's entry point: the file named by ?file= (default scene.vqrf beside the page). */
export async function main() {
  const player = new Player(document);
  window.vqrfPlayer = player;
  const file = new URLSearchParams(window.location.search).get('file') || 'scene.vqrf';
  await player.load(file);
  return player;
}
