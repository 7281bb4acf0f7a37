// WebGL2 renderer of a decoded .vqrf field: a fragment shader per pixel marches its ray the way
// vqrf/render/volume.py does: the same samples (step, span, NDC warp, contraction), the same occupancy test, the
// same activations, alpha and weight threshold, the same compositing (unshaded weight handed to the shaded samples,
// background) and render_frame's depth image.
//
// On the GPU:
// - TensoRF planes and lines: float16 2D-array textures, 4 channels a layer (density layers, then appearance);
//   DVGO's k0 grid: float16 3D textures, its density grid float32 (it goes through an exponential). Every grid has
//   a zero border one texel wide, so hardware linear filtering with texel centre k + 1 = grid point k reproduces
//   grid_sample(align_corners=True, padding_mode="zeros"): outside the grid, corners count as zero.
// - the occupancy cells: an R8UI 3D texture read with texelFetch (empty-space skipping).
// - every network layer (TensoRF's basis matrix and MLP, DVGO's rgbnet): rows of one RGBA32F texture.
// The GLSL is generated per field: channel counts, widths and encodings become constants.
//
// A frame is drawn a band of rows at a time, each band waited for without blocking the page, so no GPU task runs
// long enough to trip the browser's watchdog (software renderers take seconds a frame) and a newer frame can cut in.

import { MAT_MODE, VEC_MODE } from './field.js';

/**
 * A pinhole camera in the project's convention (vqrf/render/rays.py): c2w is OpenGL-style (x right, y up, looking
 * along -z), pixel (x, y) has its centre at (x + 0.5, y + 0.5), rows go down.
 * @typedef {{c2w: number[][], fx: number, fy: number, cx: number, cy: number, width: number, height: number}} Camera
 *   c2w: 3 rows of 4 (rotation columns, then the camera centre)
 */

const VERTEX = `#version 300 es
void main() {
  // One triangle covering the viewport.
  vec2 p = vec2(float((gl_VertexID & 1) << 2), float((gl_VertexID & 2) << 1)) - 1.0;
  gl_Position = vec4(p, 0.0, 1.0);
}`;

const MODES = { rgb: 0, depth: 1 };
/** Milliseconds a band of rows should take (a frame is drawn band by band, see Renderer.render): big enough to keep
 * every core of a software renderer busy, small enough to answer input at once. */
const BAND_MS = 150;
/** Samples whose transmittance falls below this (or below weight_thres, if larger) end the ray: each later sample's
 * weight is under the threshold, so it would not be shaded, and the opacity it would add is below this. */
const MIN_TRANSMITTANCE = 1e-4;

// ---- network weights ------------------------------------------------------------------------------------------------

// Every layer is rows of one RGBA32F texture read with texelFetch: texel (output group, row) holds 4 outputs' weights
// for one input, so one fetch feeds 4 multiply-adds. (Measured in SwiftShader: uniform blocks, indexed in a loop or
// fully unrolled, were 1.5x and 25x slower than this; halving the fetches with packed halves, or unrolling the inner
// loop, gained nothing: the multiply-adds themselves dominate. On GPUs a texture this small stays in cache.)
// A layer's input arrives in the shader as vec4 groups in whatever order the shader computes them; `inputs` lists,
// per group component, which row of the stored [in, out] matrix it multiplies (-1: a padding component, weight 0).
class NetTexture {
  constructor() {
    /** @type {Float32Array[]} */
    this.rows = [];
    this.width = 1;
  }

  /**
   * @param {import('./field.js').Matrix} weight  [in, out]
   * @param {Float32Array|null} bias  [out]
   * @param {number[]} inputs  4 * (input groups) matrix rows, -1 for padding
   * @returns {{row0: number, biasRow: number, inGroups: number, outGroups: number, bias: boolean}}
   */
  add(weight, bias, inputs) {
    const outGroups = Math.ceil(weight.cols / 4);
    const row = (values) => {
      const r = new Float32Array(outGroups * 4);
      if (values) r.set(values);
      return r;
    };
    const row0 = this.rows.length;
    for (const i of inputs) {
      this.rows.push(row(i < 0 ? null : weight.data.subarray(i * weight.cols, (i + 1) * weight.cols)));
    }
    this.rows.push(row(bias));
    this.width = Math.max(this.width, outGroups);
    return { row0, biasRow: row0 + inputs.length, inGroups: inputs.length / 4, outGroups, bias: !!bias };
  }

  /** GLSL of one dense layer: output[o] = (relu)(bias + W input) over vec4 groups. */
  code(layer, input, output, relu) {
    const start = layer.bias ? `texelFetch(uNet, ivec2(o, ${layer.biasRow}), 0)` : 'vec4(0.0)';
    return `
  for (int o = 0; o < ${layer.outGroups}; o++) {
    vec4 acc = ${start};
    for (int j = 0; j < ${layer.inGroups}; j++) {
      int r = ${layer.row0} + 4 * j;
      acc += mat4(texelFetch(uNet, ivec2(o, r), 0), texelFetch(uNet, ivec2(o, r + 1), 0),
                  texelFetch(uNet, ivec2(o, r + 2), 0), texelFetch(uNet, ivec2(o, r + 3), 0)) * ${input}[j];
    }
    ${output}[o] = ${relu ? 'max(acc, 0.0)' : 'acc'};
  }`;
  }

  /** @returns {{target: number, tex: WebGLTexture}} the texture (bound as sampler uNet) */
  texture(gl) {
    checkSize(gl, 'network', [this.width, this.rows.length], gl.MAX_TEXTURE_SIZE);
    const data = new Float32Array(this.width * this.rows.length * 4);
    this.rows.forEach((r, y) => data.set(r, y * this.width * 4));
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    setFiltering(gl, gl.TEXTURE_2D, gl.NEAREST);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, this.width, this.rows.length, 0, gl.RGBA, gl.FLOAT, data);
    return { target: gl.TEXTURE_2D, tex };
  }
}

/** Matrix rows for `n` values packed 4 to a group: [base, base + 1, ...], -1 past the end. */
function packed(base, n) {
  const out = [];
  for (let i = 0; i < Math.ceil(n / 4) * 4; i++) out.push(i < n ? base + i : -1);
  return out;
}

/**
 * Rows of positional_encoding(x, freqs) (vqrf/fields/base.py: sin of x_d 2^k for every (d, k) with d major, then
 * cos of the same) for x packed in `groups` vec4 groups of `dims` values; the shader emits, for each k, sin of every
 * group, then for each k, cos of every group.
 */
function encodingRows(base, dims, groups, freqs) {
  const out = [];
  for (const part of [0, 1]) {
    for (let k = 0; k < freqs; k++) {
      for (let i = 0; i < groups * 4; i++) out.push(i < dims ? base + part * dims * freqs + i * freqs + k : -1);
    }
  }
  return out;
}

/** GLSL for the encodings the rows above expect: sin(x[g] 2^k) for each k and g, then cos. */
function encodingCode(target, source, groups, freqs, start) {
  const lines = [];
  let n = start;
  for (const fn of ['sin', 'cos']) {
    for (let k = 0; k < freqs; k++) {
      for (let g = 0; g < groups; g++) {
        lines.push(`${target}[${n++}] = ${fn}(${source}[${g}] * ${(2 ** k).toFixed(1)});`);
      }
    }
  }
  return lines;
}

// ---- per field type: textures and GLSL ------------------------------------------------------------------------------

/**
 * One group of 4 channels of a channels-last grid [...shape, channels], with a zero border one texel wide on every
 * axis: a texel array [...(shape + 2), components] (components 4, or 1 for a single-channel grid).
 * @param {Float32Array} data
 * @param {number} channels
 * @param {number} group  channels 4 * group .. 4 * group + 3
 * @param {number[]} shape  1 to 3 axes, outermost first
 * @param {number} components
 * @returns {Float32Array}
 */
function padded(data, channels, group, shape, components = 4) {
  const dims = [1, 1, 1, ...shape].slice(-3);
  const pad = dims.map((n, i) => (i < 3 - shape.length ? 1 : n + 2));
  const lead = pad.map((n, i) => (n === dims[i] ? 0 : 1)); // padded axes start one texel in
  const out = new Float32Array(pad[0] * pad[1] * pad[2] * components);
  const c0 = group * components;
  const n = Math.min(components, channels - c0);
  for (let a = 0; a < dims[0]; a++) {
    for (let b = 0; b < dims[1]; b++) {
      for (let c = 0; c < dims[2]; c++) {
        const src = ((a * dims[1] + b) * dims[2] + c) * channels + c0;
        const dst = (((a + lead[0]) * pad[1] + b + lead[1]) * pad[2] + c + lead[2]) * components;
        for (let i = 0; i < n; i++) out[dst + i] = data[src + i];
      }
    }
  }
  return out;
}

/**
 * TensoRF-VM: textures for 3 planes + 3 lines, the basis and MLP layers, and the GLSL of density() and shade().
 */
function tensorfProgram(gl, f, net, floatLinear) {
  const textures = [];
  const uniforms = [];
  const densityLines = [];
  const appGroups = [];
  MAT_MODE.forEach(([a, b], i) => {
    const plane = f.planes[i];
    const line = f.lines[i];
    const nd = Math.ceil(plane.density.channels / 4);
    const na = Math.ceil(plane.app.channels / 4);
    const planeLayers = [];
    const lineLayers = [];
    for (const [features, groups] of [['density', nd], ['app', na]]) {
      for (let g = 0; g < groups; g++) {
        planeLayers.push(padded(plane[features].data, plane[features].channels, g, [plane.height, plane.width]));
        lineLayers.push(padded(line[features].data, line[features].channels, g, [line.length]));
      }
    }
    const format = featureFormat([...planeLayers, ...lineLayers], floatLinear, gl.RGBA16F, gl.RGBA32F);
    textures.push(arrayTexture(gl, plane.width + 2, plane.height + 2, planeLayers, format),
                  arrayTexture(gl, line.length + 2, 1, lineLayers, format));
    uniforms.push(`uPlane${i}`, `uLine${i}`);
    const c = VEC_MODE[i];
    const axis = 'xyz';
    // Plane texel (u, v) = (coord a, coord b); the line is sampled along its one row.
    for (let g = 0; g < nd; g++) {
      densityLines.push(`f += dot(texture(uPlane${i}, vec3(tc.${axis[a]}, tc.${axis[b]}, ${g}.0)), ` +
                        `texture(uLine${i}, vec3(tc.${axis[c]}, 0.5, ${g}.0)));`);
    }
    for (let g = nd; g < nd + na; g++) {
      appGroups.push(`texture(uPlane${i}, vec3(tc.${axis[a]}, tc.${axis[b]}, ${g}.0)) * ` +
                     `texture(uLine${i}, vec3(tc.${axis[c]}, 0.5, ${g}.0))`);
    }
  });

  // Basis: the appearance products arrive per plane, 4 channels per group, padded at each plane's end.
  const basisRows = [];
  let offset = 0;
  for (const plane of f.planes) {
    basisRows.push(...packed(offset, plane.app.channels));
    offset += plane.app.channels;
  }
  const basis = net.add(f.basis, null, basisRows);
  const fg = Math.ceil(f.appDim / 4);
  // MLP input, in the order the shader builds it: feature, view direction, feature encoding, view encoding.
  const mlpRows = [...packed(0, f.appDim), ...packed(f.appDim, 3),
                   ...encodingRows(f.appDim + 3, f.appDim, fg, f.feaPe),
                   ...encodingRows(f.appDim + 3 + 2 * f.feaPe * f.appDim, 3, 1, f.viewPe)];
  const l0 = net.add(f.mlp[0].weight, f.mlp[0].bias, mlpRows);
  const l1 = net.add(f.mlp[1].weight, f.mlp[1].bias, packed(0, f.mlp[1].weight.rows));
  const l2 = net.add(f.mlp[2].weight, f.mlp[2].bias, packed(0, f.mlp[2].weight.rows));
  const inputs = [`x[0] = feat[0];`];
  for (let g = 1; g < fg; g++) inputs.push(`x[${g}] = feat[${g}];`);
  inputs.push(`x[${fg}] = vec4(dir, 0.0);`);
  inputs.push(...encodingCode('x', 'feat', fg, f.feaPe, fg + 1));
  inputs.push(...encodingCode('x', 'dirs', 1, f.viewPe, fg + 1 + 2 * f.feaPe * fg));

  const activation = f.densityAct === 'relu' ? 'max(f, 0.0)' : 'softplus(f + DENSITY_SHIFT)';
  const code = `
const float DENSITY_SHIFT = ${glslFloat(f.densityShift)};
float density(vec3 tc) {
  float f = 0.0;
  ${densityLines.join('\n  ')}
  return ${activation};
}
vec3 shade(vec3 tc, vec3 dir) {
  vec4 prod[${appGroups.length}];
  ${appGroups.map((e, j) => `prod[${j}] = ${e};`).join('\n  ')}
  vec4 feat[${fg}];${net.code(basis, 'prod', 'feat', false)}${mlpShade(net, l0, l1, l2, inputs)}
}`;
  return { textures, uniforms, code };
}

/** GLSL ending shade(): the colour MLP's three layers on the `inputs` assignments of x[], from the view direction. */
function mlpShade(net, l0, l1, l2, inputs) {
  return `
  vec4 dirs[1];
  dirs[0] = vec4(dir, 0.0);
  vec4 x[${l0.inGroups}];
  ${inputs.join('\n  ')}
  vec4 h1[${l0.outGroups}];${net.code(l0, 'x', 'h1', true)}
  vec4 h2[${l1.outGroups}];${net.code(l1, 'h1', 'h2', true)}
  vec4 rgb[1];${net.code(l2, 'h2', 'rgb', false)}
  return sigmoid(rgb[0].xyz);`;
}

/** DVGO: density and k0 3D textures, the optional rgbnet, and the GLSL of density() and shade(). */
function dvgoProgram(gl, f, grid, floatLinear, net) {
  const [X, Y, Z] = grid;
  // Density in float32 where the GPU filters it: it goes through an exponential (alpha), float16 would show.
  const densityFormat = floatLinear ? gl.R32F : featureFormat([f.density], false, gl.R16F, gl.R32F);
  const textures = [volumeTexture(gl, Z + 2, Y + 2, X + 2, padded(f.density, 1, 0, grid, 1), densityFormat,
                                  gl.RED)];
  const uniforms = ['uDensity'];
  const kg = Math.ceil(f.k0.channels / 4);
  const k0Lines = [];
  const k0Format = featureFormat([f.k0.data], floatLinear, gl.RGBA16F, gl.RGBA32F);
  for (let g = 0; g < kg; g++) {
    textures.push(volumeTexture(gl, Z + 2, Y + 2, X + 2, padded(f.k0.data, f.k0.channels, g, grid), k0Format,
                                gl.RGBA));
    uniforms.push(`uK0_${g}`);
    k0Lines.push(`k0[${g}] = texture(uK0_${g}, tc.zyx);`); // texture x runs along the grid's Z axis
  }
  let shadeBody;
  if (f.layers) {
    const C = f.k0.channels;
    const l0 = net.add(f.layers[0].weight, f.layers[0].bias,
                       [...packed(0, C), ...packed(C, 3), ...encodingRows(C + 3, 3, 1, f.viewPe)]);
    const l1 = net.add(f.layers[1].weight, f.layers[1].bias, packed(0, f.layers[1].weight.rows));
    const l2 = net.add(f.layers[2].weight, f.layers[2].bias, packed(0, f.layers[2].weight.rows));
    const inputs = [];
    for (let g = 0; g < kg; g++) inputs.push(`x[${g}] = k0[${g}];`);
    inputs.push(`x[${kg}] = vec4(dir, 0.0);`, ...encodingCode('x', 'dirs', 1, f.viewPe, kg + 1));
    shadeBody = mlpShade(net, l0, l1, l2, inputs);
  } else {
    shadeBody = '\n  return sigmoid(k0[0].xyz);';
  }
  const code = `
const float ACT_SHIFT = ${glslFloat(f.actShift)};
float density(vec3 tc) {
  return softplus(texture(uDensity, tc.zyx).r + ACT_SHIFT);
}
vec3 shade(vec3 tc, vec3 dir) {
  vec4 k0[${kg}];
  ${k0Lines.join('\n  ')}${shadeBody}
}`;
  return { textures, uniforms, code };
}

function glslFloat(v) {
  const s = String(Math.fround(v));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

// ---- textures -------------------------------------------------------------------------------------------------------

function setFiltering(gl, target, filter) {
  gl.texParameteri(target, gl.TEXTURE_MIN_FILTER, filter);
  gl.texParameteri(target, gl.TEXTURE_MAG_FILTER, filter);
  for (const wrap of [gl.TEXTURE_WRAP_S, gl.TEXTURE_WRAP_T, gl.TEXTURE_WRAP_R]) {
    gl.texParameteri(target, wrap, gl.CLAMP_TO_EDGE);
  }
}

/** Refuse a texture beyond the GPU's limits with a one-line message (instead of a silent black frame). */
function checkSize(gl, what, dims, limit) {
  const max = gl.getParameter(limit);
  if (dims.some((n) => n > max)) {
    throw new Error(`the field's ${what} (${dims.join('×')}) exceeds this GPU's texture limit (${max})`);
  }
}

const HALF_MAX = 65504;

/**
 * The texture format for feature values: float16 (half the memory, filtered everywhere), unless a value is beyond
 * float16's range, then float32 where the GPU filters it.
 * @param {Float32Array[]} arrays  the values
 * @param {boolean} floatLinear  OES_texture_float_linear
 * @param {number} half  the float16 format (RGBA16F or R16F)
 * @param {number} full  the float32 one
 */
function featureFormat(arrays, floatLinear, half, full) {
  const fits = arrays.every((a) => a.every((v) => Math.abs(v) <= HALF_MAX));
  if (fits) return half;
  if (floatLinear) return full;
  throw new Error('the field holds features beyond float16\'s range, and this GPU cannot filter float32 textures');
}

/** A linear-filtered 2D array texture of RGBA layers (each a Float32Array of width * height * 4). */
function arrayTexture(gl, width, height, layers, internal) {
  checkSize(gl, 'planes', [width, height], gl.MAX_TEXTURE_SIZE);
  checkSize(gl, 'channel groups', [layers.length], gl.MAX_ARRAY_TEXTURE_LAYERS);
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D_ARRAY, tex);
  setFiltering(gl, gl.TEXTURE_2D_ARRAY, gl.LINEAR);
  const data = new Float32Array(width * height * 4 * layers.length);
  layers.forEach((layer, i) => data.set(layer, i * width * height * 4));
  gl.texImage3D(gl.TEXTURE_2D_ARRAY, 0, internal, width, height, layers.length, 0, gl.RGBA, gl.FLOAT, data);
  return { target: gl.TEXTURE_2D_ARRAY, tex };
}

/** A linear-filtered 3D texture. */
function volumeTexture(gl, width, height, depth, data, internal, format) {
  checkSize(gl, 'grid', [depth, height, width], gl.MAX_3D_TEXTURE_SIZE);
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_3D, tex);
  setFiltering(gl, gl.TEXTURE_3D, gl.LINEAR);
  gl.texImage3D(gl.TEXTURE_3D, 0, internal, width, height, depth, 0, format, gl.FLOAT, data);
  return { target: gl.TEXTURE_3D, tex };
}

/** The occupancy cells [X, Y, Z] as an R8UI 3D texture (width Z, height Y, depth X), read with texelFetch. */
function occupancyTexture(gl, occupancy) {
  const [nx, ny, nz] = occupancy.shape;
  checkSize(gl, 'occupancy grid', [nx, ny, nz], gl.MAX_3D_TEXTURE_SIZE);
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_3D, tex);
  setFiltering(gl, gl.TEXTURE_3D, gl.NEAREST);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.texImage3D(gl.TEXTURE_3D, 0, gl.R8UI, nz, ny, nx, 0, gl.RED_INTEGER, gl.UNSIGNED_BYTE, occupancy.cells);
  return { target: gl.TEXTURE_3D, tex };
}

// ---- the marching shader --------------------------------------------------------------------------------------------

/** The fragment shader: camera ray -> (NDC warp) -> span -> march with occupancy skipping -> composite. */
function fragmentSource(field, typeCode) {
  const { scene } = field;
  const defines = [scene.ndc ? '#define NDC' : '', scene.contract ? '#define CONTRACT' : '',
                   scene.whiteBg ? '#define WHITE_BG' : ''].filter(Boolean).join('\n');
  return `#version 300 es
precision highp float;
precision highp int;
precision highp sampler2D;
precision highp sampler2DArray;
precision highp sampler3D;
precision highp usampler3D;
${defines}
uniform mat3 uRot;          // camera-to-world rotation (columns: right, up, back)
uniform vec3 uEye;          // camera centre
uniform vec4 uIntrinsics;   // fx, fy, cx, cy
uniform float uHeight;      // image rows
uniform int uMode;          // 0: rgb, 1: depth (render_frame's closeness)
uniform vec3 uBoxMin, uBoxMax;       // field aabb (ray span of bounded scenes)
uniform vec3 uTexScale, uTexOffset;  // world point -> texture coordinate of the padded grids
uniform vec3 uOccMin, uOccScale, uOccShape;
uniform float uNear, uFar, uStep, uStepScale, uThres, uStopT;
uniform vec2 uDepthRange;   // depth shown as white .. black (render_frame: near..far, NDC rays 0..1)
uniform int uMaxSamples;
uniform vec3 uNdc;          // -2 f / W, -2 f / H, near plane (1)
uniform usampler3D uOcc;
uniform sampler2D uNet;
${field.type === 'tensorf'
    ? 'uniform sampler2DArray uPlane0, uPlane1, uPlane2, uLine0, uLine1, uLine2;'
    : `uniform sampler3D uDensity;\n${Array.from({ length: Math.ceil(field.dvgo.k0.channels / 4) },
      (_, g) => `uniform sampler3D uK0_${g};`).join('\n')}`}
out vec4 outColor;

// torch's softplus (threshold 20), with log1p kept accurate for tiny exp(x): density_shift puts empty space there.
float softplus(float x) {
  if (x > 20.0) return x;
  float e = exp(x);
  return e < 1e-4 ? e * (1.0 - 0.5 * e) : log(1.0 + e);
}
vec3 sigmoid(vec3 x) { return 1.0 / (1.0 + exp(-x)); }
${typeCode}

// vqrf/render/march.py's _occupied: the cell holding p (a rounding error's slack on the faces).
bool occupied(vec3 p) {
  vec3 f = (p - uOccMin) * uOccScale;
  const float tol = 1e-3;
  if (any(lessThan(f, vec3(-tol))) || any(greaterThan(f, uOccShape + tol))) return false;
  ivec3 i = clamp(ivec3(f), ivec3(0), ivec3(uOccShape) - 1);
  return texelFetch(uOcc, i.zyx, 0).r != 0u;
}

vec3 safeDir(vec3 d) { return mix(d, vec3(1e-6), equal(d, vec3(0.0))); }

void main() {
  float py = uHeight - gl_FragCoord.y;  // pixel row + 0.5, rows going down
  vec3 local = vec3((gl_FragCoord.x - uIntrinsics.z) / uIntrinsics.x, -(py - uIntrinsics.w) / uIntrinsics.y, -1.0);
  vec3 d = normalize(uRot * local);
  vec3 o = uEye;
#ifdef NDC
  // vqrf/render/rays.py ndc_rays: move the origin to z = -near, then project.
  float tn = -(uNdc.z + o.z) / d.z;
  o = o + tn * d;
  vec3 no = vec3(uNdc.x * o.x / o.z, uNdc.y * o.y / o.z, 1.0 + 2.0 * uNdc.z / o.z);
  vec3 nd = vec3(uNdc.x * (d.x / d.z - o.x / o.z), uNdc.y * (d.y / d.z - o.y / o.z), -2.0 * uNdc.z / o.z);
  o = no;
  d = nd;
#endif
  float norm = length(d);
  vec3 viewdir = d / norm;
  vec3 safe = safeDir(d);
#ifdef CONTRACT
  // vqrf/render/contraction.py: march s, with t = s inside the unit cube and T^2 / (2T - s) beyond.
  vec3 exits = max((1.0 - o) / safe, (-1.0 - o) / safe);
  float inner = max(min(min(exits.x, exits.y), exits.z), 0.5);
  float s0 = uNear <= inner ? uNear : 2.0 * inner - inner * inner / max(uNear, 1e-12);
  float s1 = uFar <= inner ? uFar : 2.0 * inner - inner * inner / max(uFar, 1e-12);
#else
  vec3 ta = (uBoxMax - o) / safe;
  vec3 tb = (uBoxMin - o) / safe;
  vec3 lo = min(ta, tb);
  vec3 hi = max(ta, tb);
  float s0 = clamp(max(max(lo.x, lo.y), lo.z), uNear, uFar);
  float s1 = clamp(min(min(hi.x, hi.y), hi.z), uNear, uFar);
#endif
  float tau = 0.0;     // optical depth so far
  float acc = 0.0;     // opacity
  float depth = 0.0;   // sum of weight * t
  float shaded = 0.0;  // weight of the shaded samples
  vec3 rgb = vec3(0.0);
  for (int k = 0; k < uMaxSamples; k++) {
    float s = s0 + uStep * float(k);
    if (s >= s1) break;
    float t = s;
#ifdef CONTRACT
    if (s > inner) t = inner * inner / max(2.0 * inner - s, 1e-12);
#endif
    vec3 p = o + t * d;
#ifdef CONTRACT
    float m = max(max(abs(p.x), abs(p.y)), abs(p.z));
    if (m > 1.0) p *= (2.0 - 1.0 / m) / m;
#endif
    if (!occupied(p)) continue;
    vec3 tc = p * uTexScale + uTexOffset;
    float sigmaTau = density(tc) * uStepScale * norm;
    float weight = (1.0 - exp(-sigmaTau)) * exp(-tau);
    tau += sigmaTau;
    acc += weight;
    depth += weight * t;
    if (weight > uThres && uMode == 0) {  // a depth image needs no colour
      rgb += weight * shade(tc, viewdir);
      shaded += weight;
    }
    if (exp(-tau) < uStopT) break;
  }
  // Unshaded samples' weight goes to the shaded ones in proportion (render_rays).
  rgb *= acc / max(shaded, 1e-10);
#ifdef WHITE_BG
  rgb += 1.0 - acc;
#endif
  if (uMode == 1) {
    float z = depth / max(acc, 1e-6);
    float closeness = clamp((uDepthRange.y - z) / (uDepthRange.y - uDepthRange.x), 0.0, 1.0) * acc;
    outColor = vec4(vec3(closeness), 1.0);
  } else {
    outColor = vec4(clamp(rgb, 0.0, 1.0), 1.0);
  }
}`;
}

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
    const log = (gl.getShaderInfoLog(shader) || 'unknown error').split('\n')[0];
    throw new Error(`the renderer's shader does not compile here (${log})`);
  }
  return shader;
}

function link(gl, vertex, fragment) {
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, vertex));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, fragment));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
    const log = (gl.getProgramInfoLog(program) || 'unknown error').split('\n')[0];
    throw new Error(`the renderer's shader does not link here (${log})`);
  }
  return program;
}

// ---- the renderer ---------------------------------------------------------------------------------------------------

/** Thrown (as a rejection) by a render that a newer one replaced. */
export class RenderCancelled extends Error {
  constructor() {
    super('render cancelled');
    this.name = 'RenderCancelled';
  }
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

export class Renderer {
  /**
   * @param {WebGL2RenderingContext} gl
   * @param {ReturnType<import('./field.js').buildField>} field
   */
  constructor(gl, field) {
    this.gl = gl;
    this.field = field;
    this.floatLinear = !!gl.getExtension('OES_texture_float_linear');
    this.target = null; // {fbo, tex, width, height}
    this.generation = 0; // bumped by every render: an older one stops at its next band
    this.costPerPixel = null; // ms, the dearest pixels of recent bands (sizes the next band)
    this.lastBand = 0; // pixels of the last band
    this.frameMs = 0;
    this.build();
  }

  /** Upload the field and compile its program. */
  build() {
    const { gl, field } = this;
    const net = new NetTexture();
    const typeProgram = field.type === 'tensorf' ? tensorfProgram(gl, field.tensorf, net, this.floatLinear)
      : dvgoProgram(gl, field.dvgo, field.grid, this.floatLinear, net);
    this.textures = [occupancyTexture(gl, field.occupancy), ...typeProgram.textures, net.texture(gl)];
    this.samplerNames = ['uOcc', ...typeProgram.uniforms, 'uNet'];
    const max = gl.getParameter(gl.MAX_TEXTURE_IMAGE_UNITS);
    if (this.textures.length > max) {
      throw new Error(`the field needs ${this.textures.length} textures, this GPU has ${max}`);
    }
    if (gl.getError() === gl.OUT_OF_MEMORY) throw new Error('the GPU ran out of memory for the field\'s textures');
    this.program = link(gl, VERTEX, fragmentSource(field, typeProgram.code));
    this.vao = gl.createVertexArray();
  }

  /** Bind the program, its textures and the field's uniforms. */
  bindField() {
    const { gl, field } = this;
    gl.useProgram(this.program);
    const loc = (name) => gl.getUniformLocation(this.program, name);
    this.textures.forEach(({ target, tex }, unit) => {
      gl.activeTexture(gl.TEXTURE0 + unit);
      gl.bindTexture(target, tex);
      gl.uniform1i(loc(this.samplerNames[unit]), unit);
    });
    const { aabb, grid, occupancy, scene, render } = field;
    gl.uniform3fv(loc('uBoxMin'), aabb.min);
    gl.uniform3fv(loc('uBoxMax'), aabb.max);
    // normalise to [-1, 1] over the box, then grid point k of n sits at texel centre k + 1 of the n + 2 padded ones.
    const scale = [];
    const offset = [];
    for (let i = 0; i < 3; i++) {
      const n = grid[i];
      const toUnit = 2 / (aabb.max[i] - aabb.min[i]);
      const half = (0.5 * (n - 1)) / (n + 2);
      const centre = (0.5 * (n - 1) + 1.5) / (n + 2);
      scale.push(toUnit * half);
      offset.push((-aabb.min[i] * toUnit - 1) * half + centre);
    }
    gl.uniform3fv(loc('uTexScale'), scale);
    gl.uniform3fv(loc('uTexOffset'), offset);
    gl.uniform3fv(loc('uOccMin'), occupancy.min);
    // cells per unit, in float32 as march.py computes it
    const cellScale = occupancy.shape.map((n, i) => Math.fround(n / Math.fround(occupancy.max[i] - occupancy.min[i])));
    gl.uniform3fv(loc('uOccScale'), cellScale);
    gl.uniform3fv(loc('uOccShape'), occupancy.shape);
    gl.uniform1f(loc('uNear'), scene.near);
    gl.uniform1f(loc('uFar'), scene.far);
    gl.uniform2f(loc('uDepthRange'), scene.ndc ? 0 : scene.near, scene.ndc ? 1 : scene.far);
    // NDC rays are cut into max_samples steps between near and far (sample_weights).
    const step = scene.ndc ? (scene.far - scene.near) / render.maxSamples : render.step;
    gl.uniform1f(loc('uStep'), step);
    gl.uniform1f(loc('uStepScale'), step * render.distanceScale);
    gl.uniform1f(loc('uThres'), render.weightThres);
    gl.uniform1f(loc('uStopT'), Math.max(render.weightThres, MIN_TRANSMITTANCE));
    gl.uniform1i(loc('uMaxSamples'), render.maxSamples);
    gl.uniform3f(loc('uNdc'), -2 * scene.ndcFocal / (scene.width || 1), -2 * scene.ndcFocal / (scene.height || 1), 1);
  }

  /** (Re)allocate the RGBA8 render target. */
  ensureTarget(width, height) {
    const { gl } = this;
    if (this.target && this.target.width === width && this.target.height === height) return this.target;
    if (this.target) {
      gl.deleteFramebuffer(this.target.fbo);
      gl.deleteTexture(this.target.tex);
    }
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    setFiltering(gl, gl.TEXTURE_2D, gl.LINEAR);
    gl.texStorage2D(gl.TEXTURE_2D, 1, gl.RGBA8, width, height);
    const fbo = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
    this.target = { fbo, tex, width, height };
    return this.target;
  }

  /** Draw one pixel and wait for it: the driver compiles the shader at its first use, which a frame's measured
   * time should not include. */
  async warmUp() {
    const c2w = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]];
    await this.render({ c2w, fx: 1, fy: 1, cx: 0.5, cy: 0.5, width: 1, height: 1 }, 'depth');
    await this.render({ c2w, fx: 1, fy: 1, cx: 0.5, cy: 0.5, width: 1, height: 1 }, 'rgb');
  }

  /** Stop the frame in progress at its next band (its render() rejects with RenderCancelled). */
  cancel() {
    this.generation++;
  }

  /** Wait (without blocking the page) until the GPU has finished the commands issued so far. */
  async finish() {
    const { gl } = this;
    const sync = gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0);
    gl.flush();
    try {
      for (;;) {
        const status = gl.clientWaitSync(sync, 0, 0);
        if (status === gl.ALREADY_SIGNALED || status === gl.CONDITION_SATISFIED) return;
        if (status === gl.WAIT_FAILED) throw new Error('the GPU stopped answering');
        await nextTask();
      }
    } finally {
      gl.deleteSync(sync);
    }
  }

  /**
   * Render `camera` into the offscreen target, a band of rows at a time (so no single GPU task runs long enough to
   * trip the browser's watchdog, and a newer render can cut in between bands).
   * @param {Camera} camera
   * @param {'rgb'|'depth'} mode
   * @returns {Promise<number>} milliseconds the frame took
   */
  async render(camera, mode = 'rgb') {
    const { gl } = this;
    const generation = ++this.generation;
    const { width, height } = camera;
    const started = performance.now();
    const target = this.ensureTarget(width, height);
    for (let y = height; y > 0;) {
      if (generation !== this.generation) throw new RenderCancelled();
      if (gl.isContextLost()) throw new Error('the WebGL context was lost');
      // Top rows first (framebuffer rows count from the bottom), so a frame fills in top to bottom. Bands start on
      // even rows: GPUs shade 2x2 pixel quads, and a band cutting quads in half pays for the half it does not draw
      // (measured in SwiftShader: 1-row bands took 2.5x as long as 8-row ones).
      const bottom = Math.max(0, y - Math.max(2, Math.round(this.bandPixels() / width)));
      const rows = y - (bottom - (bottom % 2));
      const bandStart = performance.now();
      gl.bindFramebuffer(gl.FRAMEBUFFER, target.fbo);
      gl.viewport(0, 0, width, height);
      gl.enable(gl.SCISSOR_TEST);
      gl.scissor(0, y - rows, width, rows);
      this.bindField();
      this.setCamera(camera, mode);
      gl.bindVertexArray(this.vao);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
      gl.disable(gl.SCISSOR_TEST);
      await this.finish();
      this.measured(performance.now() - bandStart, width * rows);
      y -= rows;
    }
    this.frameMs = performance.now() - started;
    return this.frameMs;
  }

  /**
   * Pixels the next band should hold: about BAND_MS at the dearest recent cost per pixel, and at most twice the last
   * band. Bands are kept short because SwiftShader (through ANGLE) silently drops a draw that runs for seconds; the
   * first band of all is small because nothing is known yet.
   */
  bandPixels() {
    if (this.costPerPixel === null) return 512;
    return Math.min(1 << 22, 2 * this.lastBand, Math.max(256, BAND_MS / this.costPerPixel));
  }

  /** Learn from a band that took `ms` for `pixels` (the worst cost fades by 10% a band, so bands grow back). */
  measured(ms, pixels) {
    const cost = Math.max(ms, 0.5) / pixels;
    this.costPerPixel = this.costPerPixel === null ? cost : Math.max(0.9 * this.costPerPixel, cost);
    this.lastBand = pixels;
  }

  setCamera(camera, mode) {
    const { gl } = this;
    const loc = (name) => gl.getUniformLocation(this.program, name);
    const m = camera.c2w;
    // mat3 uniforms are column-major: the columns are c2w's rotation columns.
    gl.uniformMatrix3fv(loc('uRot'), false, [m[0][0], m[1][0], m[2][0], m[0][1], m[1][1], m[2][1],
                                             m[0][2], m[1][2], m[2][2]]);
    gl.uniform3f(loc('uEye'), m[0][3], m[1][3], m[2][3]);
    gl.uniform4f(loc('uIntrinsics'), camera.fx, camera.fy, camera.cx, camera.cy);
    gl.uniform1f(loc('uHeight'), camera.height);
    gl.uniform1i(loc('uMode'), MODES[mode] ?? 0);
  }

  /** @returns {Uint8Array} the last frame's RGBA pixels, rows top to bottom */
  readPixels() {
    const { gl, target } = this;
    const { width, height } = target;
    const raw = new Uint8Array(width * height * 4);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, target.fbo);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, raw);
    const out = new Uint8Array(raw.length);
    const row = width * 4;
    for (let y = 0; y < height; y++) out.set(raw.subarray((height - 1 - y) * row, (height - y) * row), y * row);
    return out;
  }

  /** Draw the last frame scaled to the canvas (linear filtering while the frame is smaller than the canvas). */
  present() {
    const { gl, target } = this;
    if (!target) return;
    const canvas = gl.canvas;
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, target.fbo);
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
    gl.viewport(0, 0, canvas.width, canvas.height);
    // Keep the frame's aspect: letterbox into the canvas.
    const scale = Math.min(canvas.width / target.width, canvas.height / target.height);
    const w = Math.round(target.width * scale);
    const h = Math.round(target.height * scale);
    const x = Math.floor((canvas.width - w) / 2);
    const y = Math.floor((canvas.height - h) / 2);
    gl.clearColor(0, 0, 0, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.blitFramebuffer(0, 0, target.width, target.height, x, y, x + w, y + h, gl.COLOR_BUFFER_BIT,
                       scale === 1 ? gl.NEAREST : gl.LINEAR);
  }
}
