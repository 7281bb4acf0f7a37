/**
 * The browser's reader of the .vqrf container layer: a JSON table plus named, individually coded arrays
 * (docs/format.md, "Container layer", describes every byte; vqrf/compress/container.py is the reference).
 *
 * It trusts nothing, like the Python reader: the same checks in the same order (magic, version, table CRC, table,
 * sizes, every payload CRC, then the payloads), the same limits, and every failure thrown as a `VqrfError`
 * whose one-line message says what is wrong (worded as the Python reader words it, where it can be).
 *
 * Arrays come back as typed arrays in C (row-major) order:
 *   bool -> Uint8Array of 0 / 1      uint8 -> Uint8Array      int8 -> Int8Array
 *   int16 -> Int16Array              uint16 -> Uint16Array    int32 -> Int32Array
 *   float32 -> Float32Array          float16 -> Uint16Array of the raw IEEE binary16 bits (WebGL2 uploads them
 *                                    as HALF_FLOAT directly; `halfToFloat32` widens them)
 *
 * @module container
 */

import { LZMA_OVERFLOW, LZMA_TRUNCATED, LzmaError, decodeLzma2, lzmaDictSize } from "./lzma2.js";
import { ansDecode, ansModel } from "./ans.js";

/** `\x89VQRF\r\n\x1a`: PNG's trick against 7-bit transfers, newline conversion and DOS `type`. */
export const MAGIC = new Uint8Array([0x89, 0x56, 0x51, 0x52, 0x46, 0x0d, 0x0a, 0x1a]);
export const VERSION = 1;
/** Elements declared across all sections; more is refused before anything is allocated. */
export const MAX_ELEMENTS = 2 ** 28;
export const MAX_NDIM = 32;
/** Bytes of the inflated JSON table. */
export const MAX_TABLE = 16 * 1024 * 1024;
export const MAX_ALPHABET = 65536;
export const CODERS = ["raw", "zlib", "lzma", "shuffle+lzma", "ans"];

const FIXED_END = MAGIC.length + 6; // magic, u16 version, u32 table length
const ANS_HEAD = 12; // i32 smallest value, u32 alphabet size K, u32 counts block length
// Compressed input is handed to the browser's inflater in pieces this big, so that a hostile stream cannot
// inflate to much more than the limit (deflate expands at most ~1032 times) before it is stopped.
const INFLATE_PIECE = 16 * 1024;

/**
 * Per dtype: bytes per element, the typed array it decodes to, and the value range (integers only).
 * @type {Object<string, {size: number, array: Function, min?: number, max?: number}>}
 */
const DTYPES = {
  bool: { size: 1, array: Uint8Array },
  uint8: { size: 1, array: Uint8Array, min: 0, max: 255 },
  int8: { size: 1, array: Int8Array, min: -128, max: 127 },
  int16: { size: 2, array: Int16Array, min: -32768, max: 32767 },
  uint16: { size: 2, array: Uint16Array, min: 0, max: 65535 },
  int32: { size: 4, array: Int32Array, min: -(2 ** 31), max: 2 ** 31 - 1 },
  float16: { size: 2, array: Uint16Array },
  float32: { size: 4, array: Float32Array },
};
export const DTYPE_NAMES = Object.keys(DTYPES);

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A refused file: `problem` is one line; `message` adds the file's name when one was given. */
export class VqrfError extends Error {
  /** @param {string|null} source @param {string} problem */
  constructor(source, problem) {
    super(source ? `${source}: ${problem}` : problem);
    this.name = "VqrfError";
    this.source = source;
    this.problem = problem;
  }
}

/** Per object or array of a parsed table, the keys whose numbers were written with a fraction or an exponent. */
const FLOAT_LITERALS = new WeakMap();

/**
 * Whether `holder[key]`, a number in a header that `decodeContainer` returned, was written as `2.0` or `1e3`
 * rather than `2`: JSON.parse gives both as 2, Python's reader a float and an int, and the header checks
 * (header_check.js) refuse a float where an integer belongs, as Python does.
 * @param {Object|Array} holder @param {string|number} key @returns {boolean}
 */
export function writtenAsFloat(holder, key) {
  return FLOAT_LITERALS.get(holder)?.has(String(key)) ?? false;
}

/** A check that failed inside a table row or a payload; the caller adds which one. */
class Bad extends Error {}

/**
 * @typedef {Object} Section
 * @property {string} dtype one of bool, uint8, int8, int16, uint16, int32, float16, float32
 * @property {number[]} shape the array's shape ([] for a single value)
 * @property {Uint8Array|Int8Array|Int16Array|Uint16Array|Int32Array|Float32Array} data prod(shape) elements in
 *   C order (see the module comment for which array each dtype gives); it may be a view on a larger buffer
 */

/**
 * Parses a whole .vqrf file into its header and sections, as Python's `decode_container` does.
 *
 * @param {ArrayBuffer|ArrayBufferView} buffer the file's bytes
 * @param {string|null} [source] the file's name, put in front of error messages
 * @returns {Promise<{header: Object, sections: Object<string, Section>}>} sections in file order
 * @throws {VqrfError} anything wrong with the file, as one line
 */
export async function decodeContainer(buffer, source = null) {
  const data = asBytes(buffer);
  const { header, entries } = await readTable(data, source);
  const sections = {};
  for (const entry of entries) {
    const payload = data.subarray(entry.offset, entry.offset + entry.length);
    try {
      const section = { dtype: entry.dtype, shape: entry.shape, data: await decodePayload(entry, payload) };
      // Defined, not assigned: a section may be called "__proto__".
      Object.defineProperty(sections, entry.name, { value: section, enumerable: true, writable: true,
        configurable: true });
    } catch (err) {
      // A RangeError here is a failed allocation: the declared sizes are within the limits, the memory is not.
      if (!(err instanceof Bad || err instanceof RangeError)) throw err;
      const problem = err instanceof Bad ? err.message : firstLine(err);
      throw new VqrfError(source, `bad section ${pyRepr(entry.name)} (${entry.coder}): ${problem}`);
    }
  }
  return { header, sections };
}

/**
 * Per section, in file order: name, coder, dtype, shape, bytes (payload) and raw_bytes (uncoded size). Checks the
 * table and every CRC but decodes no payload (Python's `section_sizes`).
 *
 * @param {ArrayBuffer|ArrayBufferView} buffer @param {string|null} [source]
 * @returns {Promise<Array<{name: string, coder: string, dtype: string, shape: number[], bytes: number,
 *   raw_bytes: number}>>}
 */
export async function sectionSizes(buffer, source = null) {
  const { entries } = await readTable(asBytes(buffer), source);
  return entries.map((e) => ({ name: e.name, coder: e.coder, dtype: e.dtype, shape: e.shape, bytes: e.length,
    raw_bytes: rawSize(e.dtype, e.count) }));
}

/**
 * float16 bits to float32 values, exactly (subnormals, infinities and NaN payloads included).
 * @param {Uint16Array} halves @returns {Float32Array}
 */
export function halfToFloat32(halves) {
  const out = new Float32Array(halves.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    const sign = (h & 0x8000) << 16;
    const exponent = (h >>> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0) {
      const value = mantissa * 2 ** -24; // zero or subnormal: exact in float32
      out[i] = sign ? -value : value;
    } else if (exponent === 0x1f) {
      bits[i] = (sign | 0x7f800000 | (mantissa << 13)) >>> 0;
    } else {
      bits[i] = (sign | ((exponent + 112) << 23) | (mantissa << 13)) >>> 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The table

/**
 * @typedef {Object} Entry one validated row of the section table
 * @property {string} name @property {string} dtype @property {number[]} shape @property {string} coder
 * @property {number} length payload bytes @property {number} crc32 @property {number} count elements
 * @property {number} offset where the payload starts in the file
 */

/**
 * Checks magic, version, table CRC, the table itself, that the payloads fill the rest of the file exactly, and
 * every payload's CRC.
 * @param {Uint8Array} data @param {string|null} source
 * @returns {Promise<{header: Object, entries: Entry[]}>}
 */
async function readTable(data, source) {
  const fail = (problem) => new VqrfError(source, problem);
  checkStart(data, fail);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = view.getUint16(MAGIC.length, true);
  const tableLength = view.getUint32(MAGIC.length + 2, true);
  if (version > VERSION) throw fail(`written by a newer vqrf (container version ${version}); upgrade vqrf`);
  if (version < 1) throw fail(`unsupported container version ${version}`);
  const tableEnd = FIXED_END + tableLength;
  if (data.length < tableEnd + 4) {
    throw fail(`truncated: file ends inside the section table (${data.length} of at least ${tableEnd + 4} bytes)`);
  }
  const table = data.subarray(FIXED_END, tableEnd);
  if (crc32(table) !== view.getUint32(tableEnd, true)) throw fail("corrupt section table (CRC mismatch)");
  let text;
  try {
    text = await inflate(table, MAX_TABLE);
  } catch (err) {
    if (!(err instanceof Bad)) throw err;
    throw fail(`bad section table: ${err.message}`);
  }
  const { parsed, floats } = parseJson(text, fail);
  if (!isObject(parsed) || !isObject(parsed.header) || !Array.isArray(parsed.sections)) {
    throw fail("bad section table: expected an object with a 'header' object and a 'sections' list");
  }
  const entries = [];
  const names = new Set();
  let offset = tableEnd + 4;
  let total = 0;
  parsed.sections.forEach((row, i) => {
    let entry;
    try {
      entry = parseEntry(row, floats);
    } catch (err) {
      if (!(err instanceof Bad)) throw err;
      throw fail(`bad section table: section ${i}: ${err.message}`);
    }
    if (names.has(entry.name)) throw fail(`bad section table: section name ${pyRepr(entry.name)} repeated`);
    names.add(entry.name);
    total += entry.count;
    if (total > MAX_ELEMENTS) throw fail(`bad section table: more than ${MAX_ELEMENTS} elements declared in all`);
    entry.offset = offset;
    offset += entry.length;
    entries.push(entry);
  });
  if (offset > data.length) {
    const missing = entries.find((e) => e.offset + e.length > data.length);
    throw fail(`truncated: file ends inside section ${pyRepr(missing.name)} (${data.length} of ${offset} bytes)`);
  }
  if (offset < data.length) {
    const extra = data.length - offset;
    throw fail(`${extra} unexpected byte${extra > 1 ? "s" : ""} after the last section`);
  }
  // Checked before any payload is decoded: a flipped bit is reported as corruption, not as a decoding puzzle.
  for (const e of entries) {
    if (crc32(data.subarray(e.offset, e.offset + e.length)) !== e.crc32) {
      throw fail(`corrupt section ${pyRepr(e.name)} (CRC mismatch)`);
    }
  }
  return { header: parsed.header, entries };
}

/** The checks on the first 14 bytes that come before reading them: empty file, magic, fixed header's length. */
function checkStart(data, fail) {
  if (data.length === 0) throw fail("empty file, not a .vqrf file");
  const head = data.subarray(0, MAGIC.length);
  if (!head.every((byte, i) => byte === MAGIC[i])) {
    const altered = head.length >= 5 && head.subarray(0, 5).every((byte, i) => byte === MAGIC[i]);
    throw fail(altered ? "not a .vqrf file (magic bytes altered; was it copied in text mode?)"
      : "not a .vqrf file (wrong magic bytes)");
  }
  if (data.length < FIXED_END) {
    throw fail(`truncated: ${data.length} bytes, shorter than the ${FIXED_END}-byte file header`);
  }
}

/**
 * Strict UTF-8 JSON, as Python's `json.loads` reads it. JSON.parse already refuses NaN and Infinity; the
 * reviver notes which numbers were written with a fraction or an exponent (`1.0`, `1e3`), which Python reads as
 * floats and so refuses as lengths, CRCs or dimensions.
 * @param {Uint8Array} bytes @param {function(string): VqrfError} fail
 * @returns {{parsed: *, floats: WeakMap<Object, Set<string>>}} the value, and per object or array the keys that
 *   hold such numbers
 */
function parseJson(bytes, fail) {
  const floats = FLOAT_LITERALS;
  const reviver = function (key, value, context) {
    if (typeof value === "number" && context && typeof context.source === "string"
      && !/^-?\d+$/.test(context.source)) {
      if (!floats.has(this)) floats.set(this, new Set());
      floats.get(this).add(key);
    }
    return value;
  };
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
    return { parsed: JSON.parse(text, reviver), floats };
  } catch (err) {
    throw fail(`bad section table: not UTF-8 JSON (${firstLine(err)})`);
  }
}

/**
 * Validates one table row, with the Python reader's checks in its order.
 * @param {*} raw @param {WeakMap<Object, Set<string>>} floats @returns {Entry}
 * @throws {Bad} saying which field is wrong
 */
function parseEntry(raw, floats) {
  if (!isObject(raw)) throw new Bad("not an object");
  const { name, dtype, shape, coder } = raw;
  const isInt = (holder, key) => Number.isInteger(holder[key]) && !floats.get(holder)?.has(String(key));
  if (typeof name !== "string") throw new Bad("name is not a string");
  if (!DTYPE_NAMES.includes(dtype)) throw new Bad(`unknown dtype ${pyRepr(dtype)}`);
  if (!CODERS.includes(coder)) throw new Bad(`unknown coder ${pyRepr(coder)}`);
  if (!Array.isArray(shape) || shape.length > MAX_NDIM || !shape.every((d, i) => isInt(shape, i) && d >= 0)) {
    throw new Bad(`shape must be a list of at most ${MAX_NDIM} non-negative integers`);
  }
  // Every dimension is at most 2^28 once the first test passes, so the product of at most 32 of them (< 2^896)
  // is a finite double, which is > 2^28 exactly when the true product is.
  const count = shape.reduce((a, b) => a * b, 1);
  if (Math.max(0, ...shape) > MAX_ELEMENTS || count > MAX_ELEMENTS) {
    throw new Bad(`shape ${pyRepr(shape)} has more than ${MAX_ELEMENTS} elements`);
  }
  if (!isInt(raw, "length") || raw.length < 0) throw new Bad("length must be a non-negative integer");
  if (!isInt(raw, "crc32") || raw.crc32 < 0 || raw.crc32 >= 2 ** 32) {
    throw new Bad("crc32 must be an integer in [0, 2**32)");
  }
  if (coder === "shuffle+lzma" && DTYPES[dtype].size === 1) {
    throw new Bad(`coder shuffle+lzma does not apply to ${dtype}`);
  }
  if (coder === "ans" && DTYPES[dtype].min === undefined) throw new Bad(`coder ans does not apply to ${dtype}`);
  return { name, dtype, shape: shape.slice(), coder, length: raw.length, crc32: raw.crc32, count, offset: 0 };
}

// ---------------------------------------------------------------------------------------------------------------
// Payloads

/**
 * The section's elements; throws Bad unless the payload yields exactly `entry.count` of them.
 * @param {Entry} entry @param {Uint8Array} payload @returns {Promise<Section["data"]>}
 */
async function decodePayload(entry, payload) {
  if (entry.coder === "ans") return decodeAnsPayload(payload, entry.dtype, entry.count);
  const size = rawSize(entry.dtype, entry.count);
  let raw;
  if (entry.coder === "raw") {
    if (payload.length !== size) throw new Bad(`${payload.length} bytes where ${size} are needed`);
    raw = payload.slice(); // a copy: the file's payloads are not aligned for typed arrays
  } else if (entry.coder === "zlib") {
    raw = exactly(await inflate(payload, size), size);
  } else {
    raw = exactly(unlzma(payload, size), size);
    if (entry.coder === "shuffle+lzma") raw = unshuffle(raw, DTYPES[entry.dtype].size);
  }
  if (entry.dtype === "bool") return unpackBits(raw, entry.count);
  return typedFromBytes(raw, entry.dtype);
}

/** Bytes of the raw coding of `n` elements (bools are bits). */
function rawSize(dtype, n) {
  return dtype === "bool" ? Math.ceil(n / 8) : n * DTYPES[dtype].size;
}

function exactly(bytes, size) {
  if (bytes.length !== size) throw new Bad(`compressed stream gives ${bytes.length} bytes where ${size} are needed`);
  return bytes;
}

/**
 * Bools from bits, most significant bit first; the padding bits after the last element must be zero.
 * @param {Uint8Array} bits @param {number} n @returns {Uint8Array} [n] of 0 / 1
 */
function unpackBits(bits, n) {
  if (n % 8 && bits[bits.length - 1] & (0xff >>> (n % 8))) {
    throw new Bad("padding bits after the last bool are not zero");
  }
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (bits[i >>> 3] >>> (7 - (i & 7))) & 1;
  return out;
}

/**
 * A typed array over little-endian element bytes, which it may reuse (they must not be part of the file).
 * @param {Uint8Array} raw @param {string} dtype
 */
function typedFromBytes(raw, dtype) {
  const { size, array } = DTYPES[dtype];
  const bytes = raw.byteOffset % size === 0 ? raw : raw.slice(); // typed arrays need aligned offsets
  if (!LITTLE_ENDIAN && size > 1) {
    for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
  }
  return new array(bytes.buffer, bytes.byteOffset, bytes.length / size);
}

/**
 * Undoes shuffle+lzma's byte planes: plane j holds byte j of every element.
 * @param {Uint8Array} planes @param {number} itemsize @returns {Uint8Array}
 */
function unshuffle(planes, itemsize) {
  const n = planes.length / itemsize;
  const out = new Uint8Array(planes.length);
  for (let j = 0; j < itemsize; j++) {
    const plane = planes.subarray(j * n, (j + 1) * n);
    for (let i = 0; i < n; i++) out[i * itemsize + j] = plane[i];
  }
  return out;
}

/**
 * A raw LZMA2 stream that must end within `payload` and give at most `limit` bytes (the writer's dictionary
 * size follows from `limit`, the section's raw size).
 * @param {Uint8Array} payload @param {number} limit @returns {Uint8Array}
 */
function unlzma(payload, limit) {
  let result;
  try {
    result = decodeLzma2(payload, limit, lzmaDictSize(limit));
  } catch (err) {
    if (!(err instanceof LzmaError)) throw err;
    if (err.kind === LZMA_TRUNCATED) throw new Bad("compressed stream ends early");
    if (err.kind === LZMA_OVERFLOW) throw new Bad(`compressed stream gives more than ${limit} bytes`);
    throw new Bad(`compressed stream is invalid (${err.message})`);
  }
  afterStream(payload.length - result.consumed);
  return result.output;
}

function afterStream(extra) {
  if (extra > 0) throw new Bad(`${extra} bytes after the end of the compressed stream`);
}

/**
 * The whole output of a zlib stream (RFC 1950) that must end exactly at the end of `payload` and give at most
 * `limit` bytes. The browser's DecompressionStream checks the Adler-32 and refuses trailing bytes.
 * @param {Uint8Array} payload @param {number} limit @returns {Promise<Uint8Array>}
 */
async function inflate(payload, limit) {
  const stream = new DecompressionStream("deflate");
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  let stopped = false;
  // Fed piece by piece while the output is read, so an inflation bomb is stopped soon after passing `limit`.
  const feeding = (async () => {
    for (let at = 0; at < payload.length && !stopped; at += INFLATE_PIECE) {
      await writer.write(payload.slice(at, at + INFLATE_PIECE));
    }
    if (!stopped) await writer.close();
  })();
  feeding.catch(() => {}); // its failures also error the readable side, which reports them
  const pieces = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > limit) throw new Bad(`compressed stream gives more than ${limit} bytes`);
      pieces.push(value);
    }
  } catch (err) {
    stopped = true;
    reader.cancel().catch(() => {});
    writer.abort().catch(() => {});
    if (err instanceof Bad) throw err;
    throw new Bad(describeInflateError(err));
  }
  return concat(pieces, total);
}

/** The Python reader's wording for the browser's inflate errors (whose messages differ between browsers). */
function describeInflateError(err) {
  const message = firstLine(err);
  if (/truncat|unexpected end|incomplete/i.test(message)) return "compressed stream ends early";
  if (/junk|after the end|trailing|extra/i.test(message)) return "bytes after the end of the compressed stream";
  return `compressed stream is invalid (${message})`;
}

function concat(pieces, total) {
  if (pieces.length === 1) return pieces[0];
  const out = new Uint8Array(total);
  let at = 0;
  for (const piece of pieces) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The ans coder

/**
 * Elements of an ans payload: `<i32 lo, u32 K, u32 C> | zlib(K LEB128 counts) (C bytes) | u32 words`.
 * @param {Uint8Array} payload @param {string} dtype an integer dtype @param {number} n
 * @returns {Promise<Section["data"]>}
 */
async function decodeAnsPayload(payload, dtype, n) {
  const info = DTYPES[dtype];
  if (payload.length < ANS_HEAD) {
    throw new Bad(`${payload.length} bytes, shorter than the ${ANS_HEAD}-byte ans header`);
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const lo = view.getInt32(0, true);
  const k = view.getUint32(4, true);
  const countsLength = view.getUint32(8, true);
  if (k === 0 || n === 0) {
    if (k !== 0 || n !== 0 || lo !== 0 || payload.length !== ANS_HEAD) {
      throw new Bad("an empty alphabet must code an empty array with a bare header");
    }
    return new info.array(0);
  }
  if (k > MAX_ALPHABET || lo < info.min || lo + k - 1 > info.max) {
    throw new Bad(`alphabet [${lo}, ${lo + k - 1}] does not fit ${dtype}`);
  }
  const wordsAt = ANS_HEAD + countsLength;
  if (wordsAt > payload.length || (payload.length - wordsAt) % 4) {
    throw new Bad("counts block length does not leave a whole number of 32-bit words");
  }
  const counts = leb128Decode(await inflate(payload.subarray(ANS_HEAD, wordsAt), 5 * k), k);
  const sum = counts.reduce((a, b) => a + b, 0);
  if (sum !== n) throw new Bad(`histogram counts sum to ${sum}, not the ${n} elements declared`);
  const words = new Uint32Array((payload.length - wordsAt) / 4);
  for (let i = 0; i < words.length; i++) words[i] = view.getUint32(wordsAt + 4 * i, true);
  const out = new info.array(n);
  if (k === 1) {
    if (words.length) throw new Bad("a one-symbol alphabet carries no ANS words");
    return out.fill(lo);
  }
  if (words.length && words[words.length - 1] === 0) throw new Bad("ANS stream ends in a zero word");
  const { symbols, empty } = ansDecode(words, ansModel(counts), n);
  if (!empty) throw new Bad("ANS stream has data left after the last symbol");
  // A forged stream can decode to the right number of symbols; the histogram it was coded with cannot lie too.
  const seen = new Float64Array(k);
  for (let i = 0; i < n; i++) seen[symbols[i]] += 1;
  if (seen.some((c, s) => c !== counts[s])) throw new Bad("decoded symbols do not match the stored histogram");
  for (let i = 0; i < n; i++) out[i] = lo + symbols[i];
  return out;
}

/**
 * Exactly `k` unsigned LEB128 numbers of at most 5 bytes each (7 bits a byte, least significant first, the high
 * bit set on every byte but a number's last).
 * @param {Uint8Array} block @param {number} k @returns {Float64Array} [k] (values < 2^35, exact in doubles)
 */
function leb128Decode(block, k) {
  let ends = 0;
  for (const byte of block) if (byte < 0x80) ends++;
  if (ends !== k || block[block.length - 1] >= 0x80) {
    throw new Bad(`histogram block does not hold exactly ${k} LEB128 counts`);
  }
  const values = new Float64Array(k);
  let value = 0;
  let shift = 0;
  let s = 0;
  for (const byte of block) {
    if (shift === 35) throw new Bad("histogram count longer than 5 bytes");
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) {
      values[s++] = value;
      value = 0;
      shift = 0;
    }
  }
  return values;
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

/**
 * The zlib / PNG CRC-32 (reflected polynomial 0xEDB88320), as Python's `zlib.crc32`.
 * @param {Uint8Array} bytes @returns {number} unsigned 32-bit
 */
export function crc32(bytes) {
  const table = crcTable();
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = table[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

let CRC_TABLE = null;

function crcTable() {
  if (CRC_TABLE === null) {
    CRC_TABLE = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let j = 0; j < 8; j++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c;
    }
  }
  return CRC_TABLE;
}

/** @param {ArrayBuffer|ArrayBufferView} buffer @returns {Uint8Array} */
function asBytes(buffer) {
  if (buffer instanceof ArrayBuffer) return new Uint8Array(buffer);
  if (ArrayBuffer.isView(buffer)) return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  throw new TypeError("decodeContainer needs an ArrayBuffer or a typed array");
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * A short, single-line rendering of a JSON value the way Python's repr shows it (for messages worded like the
 * Python reader's): 'text', None, True, [1, 2]; cut to 60 characters.
 */
function pyRepr(value) {
  const text = reprOf(value);
  return text.length <= 60 ? text : text.slice(0, 57) + "...";
}

function reprOf(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") {
    const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
    const escaped = value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/\t/g, "\\t")
      .replace(/[\x00-\x1f\x7f]/g, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
    return quote + (quote === "'" ? escaped.replace(/'/g, "\\'") : escaped) + quote;
  }
  if (Array.isArray(value)) return "[" + value.map(reprOf).join(", ") + "]";
  if (typeof value === "object") {
    return "{" + Object.entries(value).map(([k, v]) => `${reprOf(k)}: ${reprOf(v)}`).join(", ") + "}";
  }
  return String(value);
}

function firstLine(err) {
  const text = String((err && err.message) || err || "error");
  return (text.split("\n")[0] || "error").slice(0, 120);
}
