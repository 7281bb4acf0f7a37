/**
 * The browser's checks on a .vqrf field header, before anything is built from it (docs/format.md, "Header limits";
 * vqrf/compress/header_check.py and the decoder around it, `decode_field` in vqrf/compress/codec.py, are the
 * reference).
 *
 * A file from a stranger is untrusted input. Every header value the decoder and the renderer use is checked for
 * type, range and consistency with the sections, with the Python reader's limits, so that the browser refuses
 * exactly the files Python refuses: a bad value is a one-line `VqrfError` naming the key, never a TypeError, a
 * NaN image, a texture the GPU cannot hold or a ray that marches forever.
 *
 * Types are strict as in Python: an integer is a JSON integer (not `true`, not `2.0`: container.js remembers how
 * each number was written, see `writtenAsFloat`), a number is finite (`1e999` parses as infinity and is refused).
 *
 * @module header_check
 */

import { VqrfError, halfToFloat32, writtenAsFloat } from "./container.js";

/** The field-layer versions each `format` may have (codec.py's FORMAT, FIELD_VERSION and _V1_FORMAT). */
export const FORMATS = Object.freeze({ "vqrf-tensorf-vq": [1, 1], "vqrf-field-vq": [2, 3] });
export const FIELD_VERSION = 3;

/** header_check.py's limits, same names. */
export const LIMITS = Object.freeze({
  MAX_GRID: 4096, // grid points (and occupancy cells) along an axis
  MAX_COORD: 1e5, // largest |coordinate| of a box
  MIN_EXTENT: 1e-5, // smallest side of a box
  MAX_FAR: 1e6,
  MAX_IMAGE_SIDE: 32768,
  MAX_CHANNELS: 1024, // components per plane, app_dim, k0_dim
  MAX_WIDTH: 4096, // hidden width of a colour MLP
  MAX_FREQS: 16, // positional-encoding frequencies
  MAX_DENSITY_SHIFT: 1e4,
  STEP_RATIO: Object.freeze([0.01, 64.0]),
  MAX_FIELD_ELEMENTS: 2 ** 28, // floats in the decoded field, checked before any is allocated
  MAX_SAMPLES_PER_RAY: 2 ** 15, // diagonal / step: bounds rendering time per pixel
  MAX_DISTANCE_SCALE: 1e6,
});
/** Stored training cameras (vqrf/data/scene.py, `CameraSet.from_stored`): image sides, and |value| of a number. */
const MAX_VIEW_SIDE = 65536;
const MAX_VIEW_NUMBER = 1e30;

/**
 * The typed keys of each header object, as the Python dataclasses declare them (vqrf/config.py, checkpoint.py):
 * key -> [type, default]; no default: the key is required. Types: bool, int, str, float (finite), int3 (a list of
 * 3 integers), ints (a list of integers). A key not listed is refused. tests/test_web_header.py compares these
 * with the dataclasses.
 */
export const SCHEMAS = Object.freeze({
  preset: schema({ name: ["str"], dataset: ["str"], downscale: ["float", 1.0] }),
  tensorf: schema({
    density_comps: ["int3", [16, 16, 16]], app_comps: ["int3", [48, 48, 48]], app_dim: ["int", 27],
    view_pe: ["int", 2], fea_pe: ["int", 2], mlp_width: ["int", 128], density_shift: ["float", -10.0],
    density_act: ["str", "softplus"], distance_scale: ["float", 25.0], bf16_mlp: ["bool", false],
  }),
  dvgo: schema({
    k0_dim: ["int", 12], rgbnet: ["bool", true], rgbnet_width: ["int", 128], view_pe: ["int", 4],
    alpha_init: ["float", 1e-2], shift_after_upsample: ["float", 1.0], bf16_mlp: ["bool", false],
  }),
  train: schema({
    iters: ["int", 30000], batch_rays: ["int", 4096], n_voxel_init: ["int", 128 ** 3],
    n_voxel_final: ["int", 300 ** 3], upsample_at: ["ints", [2000, 3000, 4000, 5500, 7000]],
    alpha_mask_at: ["ints", [2000, 4000]], lr_grid: ["float", 0.02], lr_net: ["float", 1e-3],
    lr_decay_ratio: ["float", 0.1], l1_init: ["float", 8e-5], l1_rest: ["float", 4e-5], tv_density: ["float", 0.0],
    tv_app: ["float", 0.0], entropy_last: ["float", 0.0], rgbper: ["float", 0.0], skip_zero_grad: ["bool", false],
    pervoxel_lr: ["bool", false], masks_shrink_only: ["bool", false], box_margin: ["float", 1.05],
    step_ratio: ["float", 0.5], ndc_depth_steps: ["bool", false], alpha_mask_thres: ["float", 1e-4], weight_thres: ["float", 1e-4],
    checkpoint_every: ["int", 1000], seed: ["int", 0],
  }),
  scene: schema({
    near: ["float"], far: ["float"], ndc: ["bool"], white_bg: ["bool"], ndc_focal: ["float", 0.0],
    height: ["int", 0], width: ["int", 0], contract: ["bool", false],
  }),
});

/** TensoRF's plane i spans coordinates MAT_MODE[i] = (a, b) (width along a, height along b); line i runs along c. */
const MAT_MODE = [[0, 1], [0, 2], [1, 2]];
const VEC_MODE = [2, 1, 0];

/**
 * @typedef {Object} Section a decoded section, as container.js gives it
 * @property {string} dtype @property {number[]} shape @property {ArrayLike<number>} data
 */

/**
 * @typedef {Object} CheckedHeader the values the decoder and renderer use, checked, typed and with the defaults of
 *   older writers filled in (keys keep the file's snake_case names)
 * @property {string} format
 * @property {number} version field-layer version
 * @property {"tensorf"|"dvgo"} fieldType
 * @property {Object} preset name, dataset, downscale, field_type, field {...}, train {...}, coarse (a preset or null)
 * @property {Object} scene near, far, ndc, white_bg, ndc_focal, height, width, contract
 * @property {number[]} grid [X, Y, Z] grid points
 * @property {Float32Array} aabb [xmin, ymin, zmin, xmax, ymax, zmax], float32 as the decoder holds it
 * @property {Float32Array} occupancyAabb the occupancy grid's box, the same way
 * @property {Object} precision the (informative) storage precisions, checked for type
 * @property {Object} stats the (informative) stats, checked for type
 * @property {Views|null} views the stored training cameras; null when the file has none (versions 1 and 2)
 * @property {Layout} layout the sections the field is rebuilt from, with their shapes
 * @property {Object<string, Section>} sections the sections under their version-2 names (version-1 files name
 *   some differently; for later versions this is the `sections` given)
 * @property {number} distanceScale alpha = 1 - exp(-sigma * step * distanceScale * |d|)
 * @property {number} step ray-marching step in world units (`step_ratio` times the mean voxel size)
 * @property {number} maxSamples samples a ray takes across the box (at most MAX_SAMPLES_PER_RAY)
 */

/**
 * @typedef {Object} Views
 * @property {number} count N views @property {number} width @property {number} height
 * @property {Float32Array} c2w [N * 12] camera-to-world 3x4 matrices, row-major
 * @property {Float32Array} intrinsics [N * 4] fx, fy, cx, cy per view (fx, fy > 0)
 * @property {number[]} up unit vector @property {number[]|null} depthBounds [near, far] or null
 */

/**
 * @typedef {Object} Layout
 * @property {Array<{name: string, shape: number[], kinds: Array<{kind: string, channels: number,
 *   quantised: boolean}>}>} featureGrids per grid, e.g. plane0 with kinds density and app
 * @property {Array<{name: string, role: "line"|"network", shape: number[]}>} parameters the other parameters by
 *   state-dict name, with the shape they are stored in (`param.NAME`: network weights transposed to [in, out])
 * @property {string[]} buffers buffers stored as float32 scalars `buffer.NAME` (DVGO's act_shift, voxel_size_base)
 * @property {number} elements floats the decoded field holds
 */

/**
 * Checks a field header against the limits and against the sections, as Python's `decode_field` does before and
 * while it rebuilds the field: every header key the decoder and renderer read (format and version, field_type,
 * grid, aabb, occupancy_aabb, scene, the preset with its field, train and coarse stage, precision, stats, views),
 * the presence, dtype and shape of every section the rebuild reads (masks, codebooks, codes, kept and unpruned
 * features, parameters, buffers, occupancy, cameras), the counts the masks imply, code indices within their
 * codebook, no site both kept and vector-quantised, no NaN or infinity in any float section, the field's size
 * (at most 2^28 numbers) and its rendering cost (distance scale, samples per ray). A file it accepts is one
 * Python decodes, and the rebuild cannot fail on it; a file it refuses is one Python refuses.
 *
 * Contract: `header` and `sections` must be the very objects `decodeContainer` returned (not copies): whether a
 * number was written `2` or `2.0` is looked up on them. Nothing is modified. Work is linear in the sections'
 * sizes (one pass over masks, codes and float sections); nothing is allocated from a header value before it is
 * checked.
 *
 * @param {Object} header the container's header object
 * @param {Object<string, Section>} sections the container's sections
 * @param {string|null} [source] the file's name, put in front of error messages
 * @returns {CheckedHeader}
 * @throws {VqrfError} the first problem found, as one line (`inconsistent header (...)` for a bad header value)
 */
export function checkHeader(header, sections, source = null) {
  const fail = (problem) => new VqrfError(source, problem);
  if (!isObject(header)) throw fail("inconsistent header (the header is not an object)");
  const { format, version } = checkVersion(header, fail);
  let values;
  try {
    values = checkValues(header, version);
  } catch (err) {
    if (!(err instanceof Inconsistent)) throw err;
    throw fail(`inconsistent header (${err.message})`);
  }
  const named = version === 1 ? v1Names(sections) : sections;
  const layout = checkLayout(values, named, fail);
  const views = checkViews(header, named, values.scene.ndc, source);
  const { distanceScale, step, maxSamples } = checkRender(values, named, fail);
  return Object.freeze({ format, version, ...values, views, layout, sections: named, distanceScale, step,
    maxSamples });
}

/** A bad header value; checkHeader reports it as `inconsistent header (message)`. */
class Inconsistent extends Error {}

// ---------------------------------------------------------------------------------------------------------------
// Header values

/** `format` one this reader knows, `version` an integer within its range. */
function checkVersion(header, fail) {
  const format = get(header, "format");
  const version = get(header, "version");
  if (typeof format !== "string" || !Object.hasOwn(FORMATS, format)) {
    throw fail(`not a compressed vqrf field (format ${excerpt(header, "format")})`);
  }
  const [first, last] = FORMATS[format];
  if (kindOf(header, "version") !== "int" || version < first) {
    throw fail(`unknown field version ${excerpt(header, "version")} for format '${format}'`);
  }
  if (version > last) throw fail(`written by a newer vqrf (field version ${version}); upgrade vqrf`);
  return { format, version };
}

/** The checked preset, scene, grid, boxes, precision and stats; throws Inconsistent. */
function checkValues(header, version) {
  const preset = parsePreset(get(header, "preset"), "preset");
  const fieldType = Object.hasOwn(header, "field_type") ? header.field_type : "tensorf"; // absent in version 1
  if (fieldType !== preset.field_type) {
    throw new Inconsistent(`field_type ${excerpt(header, "field_type")} but a ${preset.field_type} preset`);
  }
  // Version 1 had TensoRF only; its reader does not read buffers, which a DVGO field needs.
  if (version === 1 && fieldType !== "tensorf") {
    throw new Inconsistent(`field version 1 holds TensoRF fields only, not ${fieldType}`);
  }
  checkPreset(preset, "preset");
  const scene = checkScene(get(header, "scene"));
  const grid = checkGrid(header);
  const aabb = checkBox(header, "aabb");
  const occupancyAabb = checkBox(header, "occupancy_aabb");
  const precision = checkPrecision(Object.hasOwn(header, "precision") ? header.precision : {});
  const stats = checkStats(Object.hasOwn(header, "stats") ? header.stats : {});
  return { fieldType, preset, scene, grid, aabb, occupancyAabb, precision, stats };
}

/** Preset.from_dict: a preset object with typed keys, its field of its field_type, and at most one coarse stage. */
function parsePreset(d, where) {
  if (!isObject(d)) throw new Inconsistent(`${where} must be an object, got ${describe(d)}`);
  const fieldType = Object.hasOwn(d, "field_type") ? d.field_type : "tensorf"; // files from before DVGO
  if (fieldType !== "tensorf" && fieldType !== "dvgo") {
    throw new Inconsistent(`${where}.field_type must be one of tensorf, dvgo, got ${excerpt(d, "field_type")}`);
  }
  const coarse = get(d, "coarse");
  if (coarse !== null && where.endsWith(".coarse")) {
    // Two stages at most (DVGO's), which also keeps a hostile file's nesting from recursing deeply.
    throw new Inconsistent(`${where}.coarse must be null: a coarse stage has no coarse stage of its own`);
  }
  const field = parseObject(SCHEMAS[fieldType], get(d, "field"), `${where}.field`);
  const train = parseObject(SCHEMAS.train, get(d, "train"), `${where}.train`);
  const stage = coarse === null ? null : parsePreset(coarse, `${where}.coarse`);
  const scalars = parseObject(SCHEMAS.preset, d, where, ["field_type", "field", "train", "coarse"]);
  return { ...scalars, field_type: fieldType, field, train, coarse: stage };
}

/**
 * from_json: `values` as an object of `schema`'s keys, each of its type; unknown keys and missing required ones
 * are refused, missing optional ones take their defaults. Keys in `skip` are parsed by the caller.
 */
function parseObject(schemaOf, values, where, skip = []) {
  if (!isObject(values)) throw new Inconsistent(`${where} must be an object, got ${describe(values)}`);
  const out = {};
  for (const key of Object.keys(values)) {
    if (skip.includes(key)) continue;
    if (!Object.hasOwn(schemaOf, key)) throw new Inconsistent(`${where} has an unknown key ${jsonText(key)}`);
    out[key] = parseTyped(schemaOf[key][0], values, key, `${where}.${key}`);
  }
  for (const [key, [, fallback]] of Object.entries(schemaOf)) {
    if (Object.hasOwn(out, key)) continue;
    if (fallback === undefined) throw new Inconsistent(`${where}.${key} is missing`);
    out[key] = Array.isArray(fallback) ? fallback.slice() : fallback;
  }
  return out;
}

/** One value of a schema type (config.py's `_parse`). */
function parseTyped(type, holder, key, where) {
  const value = holder[key];
  const kind = kindOf(holder, key);
  if (["bool", "int", "str"].includes(type) && kind === type) return value;
  if (type === "float" && (kind === "int" || kind === "float")) {
    if (Number.isFinite(value)) return value;
    throw new Inconsistent(`${where} must be a finite number, got ${excerpt(holder, key)}`);
  }
  if ((type === "int3" || type === "ints") && kind === "list" && value.every((_, i) => kindOf(value, i) === "int")) {
    if (type === "ints" || value.length === 3) return value.slice();
    throw new Inconsistent(`${where} must be a list of 3 integers, got ${value.length}`);
  }
  const wanted = { bool: "true or false", int: "an integer", str: "a string", float: "a number" }[type];
  throw new Inconsistent(`${where} must be ${wanted ?? "a list of integers"}, got ${excerpt(holder, key)}`);
}

/** Ranges of the architecture and the rendering keys, in the preset and its coarse stage. */
function checkPreset(preset, where) {
  const { MAX_CHANNELS, MAX_WIDTH, MAX_FREQS, MAX_DENSITY_SHIFT, STEP_RATIO } = LIMITS;
  within(`${where}.downscale`, preset.downscale, 0, 1024, { loOpen: true });
  within(`${where}.train.step_ratio`, preset.train.step_ratio, ...STEP_RATIO);
  within(`${where}.train.weight_thres`, preset.train.weight_thres, 0, 1, { hiOpen: true });
  const cfg = preset.field;
  const at = `${where}.field`;
  if (preset.field_type === "dvgo") {
    within(`${at}.k0_dim`, cfg.k0_dim, 1, MAX_CHANNELS);
    within(`${at}.rgbnet_width`, cfg.rgbnet_width, 1, MAX_WIDTH);
    within(`${at}.view_pe`, cfg.view_pe, 0, MAX_FREQS);
    // The density activation's shift is log(alpha / (1 - alpha)): finite only well inside (0, 1).
    within(`${at}.alpha_init`, cfg.alpha_init, 1e-12, 1 - 1e-6);
    if (!cfg.rgbnet && cfg.k0_dim !== 3) {
      throw new Inconsistent(`${at}.k0_dim must be 3 without rgbnet (k0 is the colour), got ${cfg.k0_dim}`);
    }
  } else {
    for (const name of ["density_comps", "app_comps"]) {
      for (const comps of cfg[name]) within(`${at}.${name}`, comps, 1, MAX_CHANNELS);
    }
    within(`${at}.app_dim`, cfg.app_dim, 1, MAX_CHANNELS);
    within(`${at}.mlp_width`, cfg.mlp_width, 1, MAX_WIDTH);
    within(`${at}.view_pe`, cfg.view_pe, 0, MAX_FREQS);
    within(`${at}.fea_pe`, cfg.fea_pe, 0, MAX_FREQS);
    within(`${at}.density_shift`, cfg.density_shift, -MAX_DENSITY_SHIFT, MAX_DENSITY_SHIFT);
    if (cfg.density_act !== "softplus" && cfg.density_act !== "relu") {
      throw new Inconsistent(`${at}.density_act must be softplus or relu, got ${jsonText(cfg.density_act)}`);
    }
  }
  if (preset.coarse !== null) checkPreset(preset.coarse, `${where}.coarse`);
}

/** The scene's typed keys, its depth range and image size, and NDC's focal length. */
function checkScene(values) {
  const { MAX_FAR, MAX_IMAGE_SIDE } = LIMITS;
  const scene = parseObject(SCHEMAS.scene, values, "scene");
  within("scene.far", scene.far, 0, MAX_FAR, { loOpen: true });
  within("scene.near", scene.near, 0, scene.far, { hiOpen: true });
  within("scene.height", scene.height, 0, MAX_IMAGE_SIDE);
  within("scene.width", scene.width, 0, MAX_IMAGE_SIDE);
  if (scene.ndc) { // NDC rays are warped with the training images' focal length and size
    if (scene.contract) throw new Inconsistent("scene.ndc and scene.contract are both true");
    within("scene.ndc_focal", scene.ndc_focal, 0, MAX_FAR, { loOpen: true });
    within("scene.height", scene.height, 1, MAX_IMAGE_SIDE);
    within("scene.width", scene.width, 1, MAX_IMAGE_SIDE);
  }
  return scene;
}

function checkGrid(header) {
  const grid = get(header, "grid");
  if (!(Array.isArray(grid) && grid.length === 3 && grid.every((_, i) => kindOf(grid, i) === "int"))) {
    throw new Inconsistent(`grid must be a list of 3 integers, got ${excerpt(header, "grid")}`);
  }
  for (const n of grid) within("grid", n, 2, LIMITS.MAX_GRID);
  return grid.slice();
}

/**
 * [[xmin, ymin, zmin], [xmax, ymax, zmax]] -> Float32Array [6]: numbers within +-MAX_COORD, and max - min at least
 * MIN_EXTENT on every axis, computed in float32 as the decoder's tensors do.
 */
function checkBox(header, where) {
  const rows = get(header, where);
  if (!(Array.isArray(rows) && rows.length === 2 && rows.every((row) => Array.isArray(row) && row.length === 3))) {
    throw new Inconsistent(`${where} must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got ${excerpt(header, where)}`);
  }
  for (const row of rows) {
    row.forEach((v, i) => {
      const kind = kindOf(row, i);
      if (kind !== "int" && kind !== "float") {
        throw new Inconsistent(`${where} must hold numbers, got ${excerpt(row, i)}`);
      }
      within(where, v, -LIMITS.MAX_COORD, LIMITS.MAX_COORD);
    });
  }
  const box = Float32Array.from([...rows[0], ...rows[1]]);
  const extent = Math.min(...[0, 1, 2].map((i) => Math.fround(box[3 + i] - box[i])));
  if (!(extent >= Math.fround(LIMITS.MIN_EXTENT))) { // torch compares in float32
    throw new Inconsistent(`${where} must have max - min >= ${LIMITS.MIN_EXTENT} on every axis, got ${extent}`);
  }
  return box;
}

/** The storage precisions are informative (the sections' dtypes decide), but tools show them. */
function checkPrecision(values) {
  if (!isObject(values)) throw new Inconsistent(`precision must be an object, got ${describe(values)}`);
  for (const key of ["codebooks", "lines", "network"]) {
    if (Object.hasOwn(values, key) && typeof values[key] !== "string") {
      throw new Inconsistent(`precision.${key} must be a string, got ${excerpt(values, key)}`);
    }
  }
  if (Object.hasOwn(values, "codebook_levels") && kindOf(values, "codebook_levels") !== "int") {
    throw new Inconsistent(`precision.codebook_levels must be an integer, got ${excerpt(values, "codebook_levels")}`);
  }
  if (Object.hasOwn(values, "keep_steps_per_std")) finiteNumber(values, "keep_steps_per_std", "precision");
  return values;
}

/** Stats are informative; the ones tools format (site tiers, recorded PSNR) must have their types. */
function checkStats(values) {
  if (!isObject(values)) throw new Inconsistent(`stats must be an object, got ${describe(values)}`);
  if (Object.hasOwn(values, "tiers")) {
    const tiers = values.tiers;
    if (!(isObject(tiers) && ["keep", "vq", "pruned"].every((k) => kindOf(tiers, k) === "int"))) {
      throw new Inconsistent(`stats.tiers must hold integers keep, vq and pruned, got ${excerpt(values, "tiers")}`);
    }
  }
  if (Object.hasOwn(values, "psnr")) finiteNumber(values, "psnr", "stats");
  return values;
}

/** An integer below 2^53 in size (exact in a double) or a finite number with a fraction or exponent. */
function finiteNumber(holder, key, where) {
  const kind = kindOf(holder, key);
  const value = holder[key];
  if (!((kind === "int" && Math.abs(value) < 2 ** 53) || (kind === "float" && Number.isFinite(value)))) {
    throw new Inconsistent(`${where}.${key} must be a finite number, got ${excerpt(holder, key)}`);
  }
}

/** Refuse `value` outside the interval from `lo` to `hi` (closed unless said open); NaN fails too. */
function within(where, value, lo, hi, { loOpen = false, hiOpen = false } = {}) {
  if (!(lo <= value && value <= hi) || (loOpen && value === lo) || (hiOpen && value === hi)) {
    const interval = `${loOpen ? "(" : "["}${lo}, ${hi}${hiOpen ? ")" : "]"}`;
    throw new Inconsistent(`${where} must be in ${interval}, got ${numberText(value, false)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Sections

/**
 * The field the header describes, against the sections: its size, then every section the rebuild reads, and no
 * NaN or infinity in any float section (codec.py's check_layout and _Reader).
 */
function checkLayout(values, sections, fail) {
  const layout = fieldLayout(values.fieldType, values.preset.field, values.grid);
  if (values.scene.ndc && values.fieldType === "dvgo") {
    throw fail("inconsistent header (scene.ndc is true, but a dvgo field has no NDC form)");
  }
  if (layout.elements > LIMITS.MAX_FIELD_ELEMENTS) {
    throw fail(`inconsistent header (the field would hold ${layout.elements.toLocaleString("en-US")} numbers, `
      + `more than ${LIMITS.MAX_FIELD_ELEMENTS.toLocaleString("en-US")})`);
  }
  const expect = sectionReader(sections, fail);
  const cells = expect.get("occupancy", "bool", [null, null, null]);
  if (!cells.shape.every((n) => n >= 1 && n <= LIMITS.MAX_GRID)) {
    throw fail(`section 'occupancy' is bool${shapeText(cells.shape)}, expected 3 axes of 1 to ${LIMITS.MAX_GRID} `
      + "cells");
  }
  for (const grid of layout.featureGrids) checkFeatureGrid(grid, expect, fail);
  for (const { name, shape } of layout.parameters) {
    if (shape.length === 1) expect.get(`param.${name}`, "float16", shape); // biases
    else expect.matrix(`param.${name}`, shape[0], shape[1]);
  }
  for (const name of layout.buffers) expect.get(`buffer.${name}`, "float32", []);
  for (const [name, section] of Object.entries(sections)) {
    if (!allFinite(section)) throw fail(`section '${name}' holds NaN or infinite values`);
  }
  return layout;
}

/**
 * The shapes of a field of `fieldType` with architecture `cfg` on `grid` (vqrf/fields/tensorf.py and dvgo.py),
 * and how many numbers it holds. Only arithmetic: nothing is allocated.
 * @returns {Layout}
 */
function fieldLayout(fieldType, cfg, grid) {
  const mlp = (prefix, inputs, width) => [
    { name: `${prefix}.0.weight`, role: "network", shape: [inputs, width] },
    { name: `${prefix}.0.bias`, role: "network", shape: [width] },
    { name: `${prefix}.2.weight`, role: "network", shape: [width, width] },
    { name: `${prefix}.2.bias`, role: "network", shape: [width] },
    { name: `${prefix}.4.weight`, role: "network", shape: [width, 3] },
    { name: `${prefix}.4.bias`, role: "network", shape: [3] },
  ];
  const count = (shape) => shape.reduce((a, b) => a * b, 1);
  if (fieldType === "dvgo") {
    const featureGrids = [{ name: "voxels", shape: grid.slice(), kinds: [
      { kind: "density", channels: 1, quantised: false }, { kind: "k0", channels: cfg.k0_dim, quantised: true }] }];
    const parameters = cfg.rgbnet ? mlp("rgbnet", cfg.k0_dim + 3 + 6 * cfg.view_pe, cfg.rgbnet_width) : [];
    const elements = count(grid) * (1 + cfg.k0_dim) + parameters.reduce((n, p) => n + count(p.shape), 0);
    return { featureGrids, parameters, buffers: ["voxel_size_base", "act_shift"], elements };
  }
  const featureGrids = MAT_MODE.map(([a, b], i) => ({ name: `plane${i}`, shape: [grid[b], grid[a]], kinds: [
    { kind: "density", channels: cfg.density_comps[i], quantised: true },
    { kind: "app", channels: cfg.app_comps[i], quantised: true }] }));
  const lines = ["density", "app"].flatMap((kind) => VEC_MODE.map((c, i) => (
    { name: `${kind}_lines.${i}`, role: "line", shape: [grid[c], cfg[`${kind}_comps`][i]] })));
  const appTotal = cfg.app_comps.reduce((a, b) => a + b, 0);
  const inputs = 3 + cfg.app_dim + 2 * cfg.fea_pe * cfg.app_dim + 2 * cfg.view_pe * 3;
  const parameters = [...lines, { name: "basis.weight", role: "network", shape: [appTotal, cfg.app_dim] },
    ...mlp("mlp", inputs, cfg.mlp_width)];
  const planes = featureGrids.reduce((n, g, i) => n + count(g.shape) * (cfg.density_comps[i] + cfg.app_comps[i]), 0);
  const elements = planes + parameters.reduce((n, p) => n + count(p.shape), 0);
  return { featureGrids, parameters, buffers: [], elements };
}

/**
 * One feature grid's sections (docs/format.md, "Rebuilding a feature grid"): the two masks, no site both kept and
 * vector-quantised, per kind its unpruned values or its codebook, codes (within the codebook) and kept features.
 */
function checkFeatureGrid(grid, expect, fail) {
  const keep = expect.get(`${grid.name}.keep_mask`, "bool", grid.shape).data;
  const vq = expect.get(`${grid.name}.vq_mask`, "bool", grid.shape).data;
  let kept = 0;
  let quantised = 0;
  for (let i = 0; i < keep.length; i++) {
    if (keep[i] && vq[i]) throw fail(`${grid.name}: a site is both kept and vector-quantised`);
    kept += keep[i];
    quantised += vq[i];
  }
  for (const { kind, channels, quantised: isQuantised } of grid.kinds) {
    const prefix = `${grid.name}.${kind}`;
    if (!isQuantised) {
      expect.matrix(`${prefix}.values`, kept + quantised, channels);
      continue;
    }
    const codes = expect.matrix(`${prefix}.codebook`, null, channels);
    const indices = expect.get(`${prefix}.indices`, "uint16", [quantised]).data;
    let top = -1;
    for (let i = 0; i < indices.length; i++) top = Math.max(top, indices[i]);
    if (top >= codes) throw fail(`section ${prefix}.indices: code ${top} beyond the ${codes}-code codebook`);
    expect.matrix(`${prefix}.keep`, kept, channels);
  }
}

/**
 * Typed access to the sections, as codec.py's _Reader: `get` a section of one dtype and shape (null: any size),
 * `matrix` an fp16 or int8 [rows, cols] matrix (int8 with float32 per-column scale and offset), returning its rows.
 */
function sectionReader(sections, fail) {
  const get = (name, dtype, shape) => {
    const section = Object.hasOwn(sections, name) ? sections[name] : null;
    if (section === null) throw fail(`section '${name}' is missing`);
    if (section.dtype !== dtype || section.shape.length !== shape.length
      || shape.some((n, i) => n !== null && n !== section.shape[i])) {
      const wanted = shape.map((n) => (n === null ? "*" : n)).join(", ");
      throw fail(`section '${name}' is ${section.dtype}${shapeText(section.shape)}, expected ${dtype}[${wanted}]`);
    }
    return section;
  };
  const matrix = (name, rows, cols) => {
    const stored = Object.hasOwn(sections, name) ? sections[name] : null;
    if (stored !== null && stored.dtype === "int8") {
      get(`${name}.scale`, "float32", [cols]);
      get(`${name}.offset`, "float32", [cols]);
      return get(name, "int8", [rows, cols]).shape[0];
    }
    return get(name, "float16", [rows, cols]).shape[0];
  };
  return { get, matrix };
}

/** No NaN or infinity in a float section (float16 comes as raw bits: exponent all ones is NaN or infinity). */
function allFinite(section) {
  const data = section.data;
  if (section.dtype === "float16") {
    for (let i = 0; i < data.length; i++) if ((data[i] & 0x7c00) === 0x7c00) return false;
  } else if (section.dtype === "float32") {
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
  }
  return true;
}

/** Version-1 section names under their version-2 names (codec.py's _v1_names). */
function v1Names(sections) {
  const renames = new Map([["basis", "param.basis.weight"]]);
  for (let i = 0; i < 3; i++) {
    for (const kind of ["density", "app"]) renames.set(`line${i}.${kind}`, `param.${kind}_lines.${i}`);
    renames.set(`mlp${i}.weight`, `param.mlp.${2 * i}.weight`);
    renames.set(`mlp${i}.bias`, `param.mlp.${2 * i}.bias`);
  }
  const out = {};
  for (const [name, section] of Object.entries(sections)) {
    const dot = name.lastIndexOf(".");
    const stem = dot < 0 ? "" : name.slice(0, dot);
    const suffix = name.slice(dot + 1);
    const renamed = (suffix === "scale" || suffix === "offset") && renames.has(stem)
      ? `${renames.get(stem)}.${suffix}` : (renames.get(name) ?? name);
    define(out, renamed, section);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Stored cameras and rendering cost

/**
 * The stored training cameras (vqrf/data/scene.py, CameraSet.from_stored), or null when the header has none:
 * image size, poses [N, 3, 4] with N >= 1, shared or per-view intrinsics with positive focal lengths, a unit up
 * vector, and depth bounds 0 < near < far (required for a forward-facing scene).
 */
function checkViews(header, sections, ndc, source) {
  const meta = get(header, "views");
  if (meta === null) return null;
  const expect = sectionReader(sections, (problem) => new VqrfError(source, problem));
  const stored = Object.hasOwn(sections, "views.c2w") ? sections["views.c2w"] : null;
  const poses = expect.get("views.c2w", stored !== null && stored.dtype === "float32" ? "float32" : "float16",
    [null, 3, 4]);
  const perView = Object.hasOwn(sections, "views.intrinsics") ? expect.get("views.intrinsics", "float32", [null, 4])
    : null;
  const bad = (problem) => new VqrfError(source, `stored cameras: ${problem}`);
  if (!isObject(meta)) throw bad("the 'views' header entry is not an object");
  const size = ["width", "height"].map((k) => get(meta, k));
  if (!["width", "height"].every((k) => kindOf(meta, k) === "int" && meta[k] >= 1 && meta[k] <= MAX_VIEW_SIDE)) {
    throw bad(`image size [${size.map(describe).join(", ")}] is not two integers in [1, ${MAX_VIEW_SIDE}]`);
  }
  const n = poses.shape[0];
  if (n === 0) throw bad(`poses of shape ${shapeText(poses.shape)}, expected [N, 3, 4] with N >= 1`);
  const c2w = poses.dtype === "float16" ? halfToFloat32(poses.data) : Float32Array.from(poses.data);
  let intrinsics;
  if (Object.hasOwn(meta, "intrinsics")) {
    const shared = Float32Array.from(viewNumbers(meta, "intrinsics", 4, bad)); // the reader holds them as float32
    intrinsics = new Float32Array(4 * n).map((_, i) => shared[i % 4]);
  } else if (perView === null) {
    throw bad("neither shared nor per-view intrinsics");
  } else if (perView.shape[0] !== n) {
    throw bad(`intrinsics of shape ${shapeText(perView.shape)} for ${n} poses`);
  } else {
    intrinsics = Float32Array.from(perView.data);
  }
  if (!c2w.every(Number.isFinite) || !intrinsics.every(Number.isFinite)) {
    throw bad("poses or intrinsics are not finite");
  }
  for (let i = 0; i < n; i++) {
    if (!(intrinsics[4 * i] > 0 && intrinsics[4 * i + 1] > 0)) throw bad("a focal length is not positive");
  }
  const up = viewNumbers(meta, "up", 3, bad);
  if (Math.abs(Math.hypot(...up) - 1) > 1e-3) throw bad(`up [${up.join(", ")}] is not a unit vector`);
  let depthBounds = get(meta, "depth_bounds");
  if (depthBounds !== null) {
    const [near, far] = viewNumbers(meta, "depth_bounds", 2, bad);
    if (!(near > 0 && near < far)) throw bad(`depth bounds [${near}, ${far}] are not 0 < near < far`);
    depthBounds = [near, far];
  } else if (ndc) {
    throw bad("a forward-facing scene without depth bounds");
  }
  return Object.freeze({ count: n, width: size[0], height: size[1], c2w, intrinsics, up, depthBounds });
}

/** `meta[key]` as a list of `n` JSON numbers under 1e30 in size (so float32 holds them; booleans refused). */
function viewNumbers(meta, key, n, bad) {
  const value = meta[key];
  const ok = Array.isArray(value) && value.length === n
    && value.every((v) => typeof v === "number" && Math.abs(v) < MAX_VIEW_NUMBER);
  if (!ok) throw bad(`${key} ${excerpt(meta, key)} is not ${n} finite numbers`);
  return value.slice();
}

/**
 * The rendering cost check_render bounds: the alpha scale (TensoRF: the preset's distance_scale; DVGO:
 * 1 / buffer.voxel_size_base, in float32 as the decoder computes it) and the samples a ray takes across the box.
 */
function checkRender(values, sections, fail) {
  const { MAX_DISTANCE_SCALE, MAX_SAMPLES_PER_RAY } = LIMITS;
  const distanceScale = values.fieldType === "dvgo" ? Math.fround(1 / sections["buffer.voxel_size_base"].data[0])
    : values.preset.field.distance_scale;
  if (!(distanceScale > 0 && distanceScale <= MAX_DISTANCE_SCALE)) {
    throw fail(`inconsistent header (distance scale ${distanceScale} is outside (0, ${MAX_DISTANCE_SCALE}])`);
  }
  const { step_ratio: stepRatio, ndc_depth_steps: depthSteps } = values.preset.train;
  const { near, far, ndc } = values.scene;
  const { step, maxSamples } = marchSteps(values.aabb, values.grid, stepRatio, ndc && depthSteps ? far - near : null);
  if (maxSamples > MAX_SAMPLES_PER_RAY) {
    throw fail(`inconsistent header (preset.train.step_ratio ${stepRatio} gives ${maxSamples.toLocaleString("en-US")}`
      + ` samples across the box, more than ${MAX_SAMPLES_PER_RAY.toLocaleString("en-US")})`);
  }
  return { distanceScale, step, maxSamples };
}

/**
 * The ray-marching step (`step_ratio` times the mean voxel size) and the samples a ray takes across the box
 * (`diagonal / step + 1`, truncated), in float32 as Python's RenderSettings.for_field computes them with torch, so
 * that a box at the cap gets the same verdict. With `ndcDepthSpan` (far - near of a scene in NDC whose preset has
 * `ndc_depth_steps`) the samples are `2 * ndcDepthSpan / (step_ratio * z-voxel) + 1` instead.
 * @param {ArrayLike<number>} aabb [xmin, ymin, zmin, xmax, ymax, zmax] @param {number[]} grid grid points per axis
 * @param {number} stepRatio @param {number | null} [ndcDepthSpan]
 * @returns {{step: number, diagonal: number, maxSamples: number}}
 */
export function marchSteps(aabb, grid, stepRatio, ndcDepthSpan = null) {
  const f = Math.fround;
  const extent = [0, 1, 2].map((i) => f(f(aabb[3 + i]) - f(aabb[i])));
  const voxel = extent.map((e, i) => f(e / (grid[i] - 1)));
  const step = f(f(f(voxel[0] + voxel[1]) + voxel[2]) / 3) * stepRatio;
  // torch's float32 norm accumulates the squares with fused multiply-adds (a float32's square is exact in a double,
  // so each step rounds once, as there).
  let squares = 0;
  for (const e of extent) squares = f(e * e + squares);
  const diagonal = f(Math.sqrt(squares));
  const samples = ndcDepthSpan === null ? diagonal / step : (2 * ndcDepthSpan) / (voxel[2] * stepRatio);
  return { step, diagonal, maxSamples: Math.trunc(samples) + 1 };
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

/** Frozen key -> [type, default] table with no prototype, so a key like "constructor" is never found in it. */
function schema(entries) {
  return Object.freeze(Object.assign(Object.create(null), entries));
}

/**
 * What a parsed JSON value is, with what JSON.parse loses: a number written `2` is an "int", `2.0` or `2e0` a
 * "float" (Python's reader tells them apart). Absent keys are "null", as Python's dict.get gives None.
 * @returns {"null"|"bool"|"int"|"float"|"str"|"list"|"object"}
 */
function kindOf(holder, key) {
  const value = Object.hasOwn(holder, key) ? holder[key] : null;
  if (value === null) return "null";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return writtenAsFloat(holder, key) ? "float" : "int";
  if (typeof value === "string") return "str";
  return Array.isArray(value) ? "list" : "object";
}

/** `holder[key]`, or null when absent (Python's dict.get). */
function get(holder, key) {
  return Object.hasOwn(holder, key) ? holder[key] : null;
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Sets an own property, even one called "__proto__" (a section may have any name). */
function define(target, key, value) {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

/** A short, one-line description of `holder[key]` for a message (config.py's json_excerpt). */
function excerpt(holder, key) {
  const value = get(holder, key);
  if (typeof value === "number") return numberText(value, writtenAsFloat(holder, key));
  return describe(value);
}

function describe(value) {
  if (Array.isArray(value)) return "a list";
  if (isObject(value)) return "an object";
  if (typeof value === "number") return numberText(value, false);
  return jsonText(value === undefined ? null : value);
}

/** A number as Python's json.dumps writes it: `Infinity`, `2.0` for a float-valued integer. */
function numberText(value, isFloat) {
  if (!Number.isFinite(value)) return Number.isNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
  const text = String(value);
  return isFloat && Number.isInteger(value) && !/e/.test(text) ? `${text}.0` : text;
}

function jsonText(value) {
  const text = JSON.stringify(value);
  return text.length <= 40 ? text : `${text.slice(0, 37)}...`;
}

function shapeText(shape) {
  return `[${shape.join(", ")}]`;
}
