// The field layer of a .vqrf file in the browser: decoded sections -> the arrays the renderer uploads.
//
// Follows docs/format.md ("Field layer") as vqrf/compress/codec.py's decode_field does: header_check.js first checks
// every header value and every section's presence, dtype and shape (Python's verdict on every file); then each
// feature grid is rebuilt from its masks, codebooks + indices and kept features, int8 matrices are dequantised per
// column, and the lines, network weights (stored transposed, [in, out]), buffers, occupancy cells and training
// cameras are taken as they are. A bad file is a VqrfError with a one-line message.

import { VqrfError, halfToFloat32 } from './container.js';
import { checkHeader } from './header_check.js';

/**
 * @typedef {Int8Array|Uint8Array|Int16Array|Uint16Array|Int32Array|Float32Array} TypedArray
 * @typedef {{dtype: string, shape: number[], data: TypedArray}} Section
 *   One decoded array in C order: bool as one byte (0 / 1) per element, float16 as raw halves (Uint16Array).
 * @typedef {{header: Object, sections: Object<string, Section>}} Container  what decodeContainer returns
 * @typedef {{rows: number, cols: number, data: Float32Array}} Matrix  row-major [rows, cols]
 * @typedef {{weight: Matrix, bias: Float32Array}} Layer  y = x @ weight + bias (weight is [in, out])
 * @typedef {{channels: number, data: Float32Array}} Features  channels-last [...sites, channels]
 * @typedef {{width: number, height: number, density: Features, app: Features}} Plane  [H, W, C]; rows run along b
 * @typedef {{length: number, density: Features, app: Features}} Line  [L, C]
 * @typedef {{shape: number[], cells: Uint8Array, min: number[], max: number[]}} Occupancy  [X-1, Y-1, Z-1] cells
 *   over the box min..max
 * @typedef {{near: number, far: number, ndc: boolean, whiteBg: boolean, ndcFocal: number, height: number,
 *            width: number, contract: boolean}} SceneInfo
 * @typedef {{step: number, maxSamples: number, weightThres: number, distanceScale: number}} RenderSettings
 *   step: sample spacing of unit-direction rays in world units (NDC rays: see the renderer); maxSamples: samples per
 *   ray before skipping (RenderSettings.for_field)
 * @typedef {{c2w: number[][], fx: number, fy: number, cx: number, cy: number}} ViewCamera  c2w: 3 rows of 4
 * @typedef {{width: number, height: number, up: number[], depthBounds: number[]|null, cameras: ViewCamera[]}} Views
 */

/** Plane i spans coordinates MAT_MODE[i] = (a, b); line i runs along VEC_MODE[i] (vqrf/fields/vm_kernel.py). */
export const MAT_MODE = [[0, 1], [0, 2], [1, 2]];
export const VEC_MODE = [2, 1, 0];

/**
 * Widen a numeric section to float32 (float16 raw halves exactly).
 * @param {Section} section
 * @returns {Float32Array}
 */
export function toFloat32(section) {
  if (section.dtype === 'float16') return halfToFloat32(section.data);
  return section.data instanceof Float32Array ? section.data : Float32Array.from(section.data);
}

/** Typed access to the sections (header_check.js has checked each one's dtype and shape already). */
class Reader {
  /**
   * @param {Object<string, Section>} sections
   * @param {string|null} source  the file's name, for messages
   */
  constructor(sections, source) {
    this.sections = sections;
    this.source = source;
  }

  /** @returns {Section} */
  get(name) {
    const s = Object.hasOwn(this.sections, name) ? this.sections[name] : null;
    if (s === null) throw new VqrfError(this.source, `section '${name}' is missing`);
    return s;
  }

  /**
   * An fp16 matrix, or an int8 one with per-column .scale and .offset (q * scale + offset), as float32 [rows, cols].
   * @returns {Matrix}
   */
  matrix(name, cols) {
    const s = this.get(name);
    if (s.dtype !== 'int8') return { rows: s.data.length / cols, cols, data: toFloat32(s) };
    const scale = toFloat32(this.get(`${name}.scale`));
    const offset = toFloat32(this.get(`${name}.offset`));
    const out = new Float32Array(s.data.length);
    for (let i = 0; i < out.length; i++) {
      const c = i % cols;
      out[i] = Math.fround(Math.fround(s.data[i] * scale[c]) + offset[c]); // float32, multiply then add, as torch
    }
    return { rows: out.length / cols, cols, data: out };
  }
}

/**
 * Rebuild one feature grid's kinds (docs/format.md, "Rebuilding a feature grid"): vq sites take their code's row,
 * kept sites their own, unpruned sites of a kind that is not vector-quantised their row of `values`; pruned sites
 * stay zero. Sites are in raster order.
 * @param {Reader} read
 * @param {{name: string, shape: number[], kinds: {kind: string, channels: number, quantised: boolean}[]}} grid
 * @returns {Object<string, Features>} per kind
 */
function readGrid(read, grid) {
  const keep = read.get(`${grid.name}.keep_mask`).data;
  const vq = read.get(`${grid.name}.vq_mask`).data;
  const nSites = keep.length;
  const out = {};
  for (const { kind, channels: c, quantised } of grid.kinds) {
    const prefix = `${grid.name}.${kind}`;
    const flat = new Float32Array(nSites * c);
    if (!quantised) {
      const values = read.matrix(`${prefix}.values`, c).data;
      for (let i = 0, n = 0; i < nSites; i++) {
        if (keep[i] || vq[i]) flat.set(values.subarray(n * c, ++n * c), i * c);
      }
    } else {
      const book = read.matrix(`${prefix}.codebook`, c);
      const indices = read.get(`${prefix}.indices`).data;
      const kept = read.matrix(`${prefix}.keep`, c).data;
      for (let i = 0, v = 0, k = 0; i < nSites; i++) {
        if (vq[i]) {
          const code = indices[v++];
          if (code >= book.rows) { // checked by header_check.js; kept here so no read can go out of bounds
            throw new VqrfError(read.source,
              `section ${prefix}.indices: code ${code} beyond the ${book.rows}-code codebook`);
          }
          flat.set(book.data.subarray(code * c, (code + 1) * c), i * c);
        } else if (keep[i]) {
          flat.set(kept.subarray(k * c, ++k * c), i * c);
        }
      }
    }
    out[kind] = { channels: c, data: flat };
  }
  return out;
}

/** A network layer: param.{name}.weight ([in, out]) and param.{name}.bias. @returns {Layer} */
function readLayer(read, name, outputs) {
  return { weight: read.matrix(`param.${name}.weight`, outputs), bias: toFloat32(read.get(`param.${name}.bias`)) };
}

/** TensoRF-VM: planes, lines, basis matrix and shading MLP (vqrf/fields/tensorf.py). */
function readTensorf(read, cfg, grid, layout) {
  const planes = layout.featureGrids.map((g, i) => {
    const [a, b] = MAT_MODE[i];
    return { width: grid[a], height: grid[b], ...readGrid(read, g) };
  });
  const lines = VEC_MODE.map((c, i) => {
    const line = (kind, n) => ({ channels: n, data: read.matrix(`param.${kind}_lines.${i}`, n).data });
    return { length: grid[c], density: line('density', cfg.density_comps[i]), app: line('app', cfg.app_comps[i]) };
  });
  return {
    densityComps: cfg.density_comps, appComps: cfg.app_comps, appDim: cfg.app_dim, viewPe: cfg.view_pe,
    feaPe: cfg.fea_pe, mlpWidth: cfg.mlp_width, densityShift: cfg.density_shift, densityAct: cfg.density_act,
    planes, lines, basis: read.matrix('param.basis.weight', cfg.app_dim),
    mlp: [readLayer(read, 'mlp.0', cfg.mlp_width), readLayer(read, 'mlp.2', cfg.mlp_width),
          readLayer(read, 'mlp.4', 3)],
  };
}

/** DVGO: a density grid and a feature grid k0, with an optional colour MLP (vqrf/fields/dvgo.py). */
function readDvgo(read, cfg, layout) {
  const voxels = readGrid(read, layout.featureGrids[0]);
  const scalar = (name) => toFloat32(read.get(name))[0];
  const w = cfg.rgbnet_width;
  return {
    k0Dim: cfg.k0_dim, viewPe: cfg.view_pe, density: voxels.density.data, k0: voxels.k0,
    actShift: scalar('buffer.act_shift'), voxelSizeBase: scalar('buffer.voxel_size_base'),
    layers: cfg.rgbnet
      ? [readLayer(read, 'rgbnet.0', w), readLayer(read, 'rgbnet.2', w), readLayer(read, 'rgbnet.4', 3)]
      : null,
  };
}

/** The stored training cameras as the player uses them, or null (files before version 3). @returns {Views|null} */
function viewsOf(views) {
  if (!views) return null;
  const cameras = [];
  for (let i = 0; i < views.count; i++) {
    const m = Array.from(views.c2w.subarray(12 * i, 12 * i + 12));
    const [fx, fy, cx, cy] = views.intrinsics.subarray(4 * i, 4 * i + 4);
    cameras.push({ c2w: [m.slice(0, 4), m.slice(4, 8), m.slice(8, 12)], fx, fy, cx, cy });
  }
  return { width: views.width, height: views.height, up: views.up, depthBounds: views.depthBounds, cameras };
}

/**
 * Everything the renderer and the player need from a decoded .vqrf container.
 * @param {Container} container  the objects decodeContainer returned (header_check.js reads how numbers were written)
 * @param {string|null} [source]  the file's name, put in front of error messages
 * @returns {{type: 'tensorf'|'dvgo', grid: number[], aabb: {min: number[], max: number[]}, occupancy: Occupancy,
 *            scene: SceneInfo, render: RenderSettings, tensorf?: Object, dvgo?: Object, views: Views|null}}
 * @throws {VqrfError} a file the Python reader refuses, with its one-line message
 */
export function buildField(container, source = null) {
  const checked = checkHeader(container.header, container.sections, source);
  const read = new Reader(checked.sections, source);
  const cfg = checked.preset.field;
  const grid = checked.grid;
  const s = checked.scene;
  const box = (b) => ({ min: Array.from(b.subarray(0, 3)), max: Array.from(b.subarray(3, 6)) });
  const cells = read.get('occupancy');
  const field = {
    type: checked.fieldType,
    grid,
    aabb: box(checked.aabb),
    occupancy: { shape: cells.shape.slice(), cells: cells.data, ...box(checked.occupancyAabb) },
    scene: { near: s.near, far: s.far, ndc: s.ndc, whiteBg: s.white_bg, ndcFocal: s.ndc_focal, height: s.height,
             width: s.width, contract: s.contract },
    render: { step: checked.step, maxSamples: checked.maxSamples, weightThres: checked.preset.train.weight_thres,
              distanceScale: checked.distanceScale },
    views: viewsOf(checked.views),
  };
  if (field.type === 'tensorf') field.tensorf = readTensorf(read, cfg, grid, checked.layout);
  else field.dvgo = readDvgo(read, cfg, checked.layout);
  return field;
}
