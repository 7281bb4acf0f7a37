/**
 * A decoder for raw LZMA2 streams, as the `lzma` and `shuffle+lzma` coders of a .vqrf container store them
 * (docs/format.md, "Coders": no .xz or .lzma wrapper, no check; the container's CRC32 covers the payload).
 *
 * Written from the LZMA / LZMA2 format as liblzma produces it. The whole output is kept in one array, which
 * serves as the dictionary: a section is at most a few MB, so no ring buffer is needed.
 *
 * LZMA2 is a sequence of chunks, each starting with a control byte:
 *   0x00                 end of stream
 *   0x01 / 0x02          stored chunk (with / without dictionary reset): u16 BE size - 1, then the bytes
 *   0x80 | r << 5 | u    LZMA chunk: u = bits 16..20 of (unpacked size - 1), then u16 BE low bits of it,
 *                        u16 BE packed size - 1, a properties byte when r >= 2, then the range-coded data.
 *                        r = 0: continue, 1: reset state, 2: reset state + new properties,
 *                        3: also reset the dictionary.
 * Every LZMA chunk starts a fresh range decoder, and its packed bytes must be used up exactly.
 *
 * @module lzma2
 */

/** Failure kinds, so that the container can word them like the Python reader does. */
export const LZMA_INVALID = "invalid";
export const LZMA_TRUNCATED = "truncated";
export const LZMA_OVERFLOW = "overflow";

/** A decoding failure; `kind` is one of LZMA_INVALID, LZMA_TRUNCATED, LZMA_OVERFLOW. */
export class LzmaError extends Error {
  /** @param {string} kind @param {string} message */
  constructor(kind, message) {
    super(message);
    this.name = "LzmaError";
    this.kind = kind;
  }
}

const invalid = (message) => new LzmaError(LZMA_INVALID, message);

// Probabilities are 11-bit fixed point; every model starts at one half.
const PROB_INIT = 1024;
const STATES = 12;
const POS_STATES_MAX = 16; // pb <= 4
const MATCH_MIN_LEN = 2;
const END_POS_MODEL_INDEX = 14; // distance slots below this use the reverse bit trees of `posSpecial`
const FULL_DISTANCES = 128;
const ALIGN_BITS = 4;
const LITERAL_CODER_SIZE = 0x300;
const MAX_LC_PLUS_LP = 4; // an LZMA2 restriction

/**
 * The range decoder over one chunk's packed bytes `input[start, end)`.
 * `range` and `code` are kept as unsigned 32-bit values in plain numbers; `code < range` holds throughout.
 */
class RangeDecoder {
  /** @param {Uint8Array} input @param {number} start @param {number} end */
  constructor(input, start, end) {
    if (end - start < 5) throw invalid("LZMA chunk shorter than the range coder's 5 initial bytes");
    if (input[start] !== 0) throw invalid("LZMA chunk does not start with a zero byte");
    this.input = input;
    this.pos = start + 5;
    this.end = end;
    this.range = 0xffffffff;
    const b = input.subarray(start + 1, start + 5);
    this.code = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0; // big-endian
    if (this.code === this.range) throw invalid("LZMA range coder starts out of range");
  }

  /** Keeps `range` >= 2^24 by shifting in one more byte; LZMA's encoder shifts at the same moments. */
  normalize() {
    if (this.range < 0x1000000) {
      if (this.pos >= this.end) throw invalid("LZMA chunk needs more bytes than its packed size");
      this.range = (this.range << 8) >>> 0;
      this.code = ((this.code << 8) | this.input[this.pos++]) >>> 0;
    }
  }

  /**
   * One bit under the adaptive probability `probs[i]` (of a zero), which it updates.
   * @param {Uint16Array} probs @param {number} i @returns {number} 0 or 1
   */
  bit(probs, i) {
    const p = probs[i];
    const bound = (this.range >>> 11) * p; // < 2^32, exact in a double
    let bit;
    if (this.code < bound) {
      this.range = bound;
      probs[i] = p + ((2048 - p) >>> 5);
      bit = 0;
    } else {
      this.range -= bound;
      this.code -= bound;
      probs[i] = p - (p >>> 5);
      bit = 1;
    }
    this.normalize();
    return bit;
  }

  /**
   * `count` bits of probability one half, most significant first.
   * @param {number} count at most 26 @returns {number}
   */
  directBits(count) {
    let value = 0;
    for (let i = 0; i < count; i++) {
      this.range >>>= 1;
      let bit = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        bit = 1;
      }
      this.normalize();
      value = value * 2 + bit;
    }
    return value;
  }

  /**
   * A `bits`-bit number coded most significant bit first through the binary tree `probs[offset + 1 ..]`.
   * @param {Uint16Array} probs @param {number} offset @param {number} bits @returns {number}
   */
  tree(probs, offset, bits) {
    let m = 1;
    for (let i = 0; i < bits; i++) m = (m << 1) | this.bit(probs, offset + m);
    return m - (1 << bits);
  }

  /** As `tree`, but least significant bit first. */
  reverseTree(probs, offset, bits) {
    let m = 1;
    let value = 0;
    for (let i = 0; i < bits; i++) {
      const bit = this.bit(probs, offset + m);
      m = (m << 1) | bit;
      value |= bit << i;
    }
    return value;
  }
}

/** Probabilities of a match length: a choice between 8 low, 8 middle (per position state) and 256 high lengths. */
class LengthModel {
  constructor() {
    this.choice = new Uint16Array(2);
    this.low = new Uint16Array(POS_STATES_MAX << 3);
    this.mid = new Uint16Array(POS_STATES_MAX << 3);
    this.high = new Uint16Array(256);
  }

  reset() {
    for (const probs of [this.choice, this.low, this.mid, this.high]) probs.fill(PROB_INIT);
  }

  /** @param {RangeDecoder} rc @param {number} posState @returns {number} length - MATCH_MIN_LEN, 0..271 */
  decode(rc, posState) {
    if (rc.bit(this.choice, 0) === 0) return rc.tree(this.low, posState << 3, 3);
    if (rc.bit(this.choice, 1) === 0) return 8 + rc.tree(this.mid, posState << 3, 3);
    return 16 + rc.tree(this.high, 0, 8);
  }
}

/** The LZMA model: properties, adaptive probabilities, the state machine and the four repeated distances. */
class LzmaModel {
  constructor() {
    this.lc = 0;
    this.lp = 0;
    this.pb = 0;
    this.literal = new Uint16Array(LITERAL_CODER_SIZE << MAX_LC_PLUS_LP);
    this.isMatch = new Uint16Array(STATES * POS_STATES_MAX);
    this.isRep = new Uint16Array(STATES);
    this.isRepG0 = new Uint16Array(STATES);
    this.isRepG1 = new Uint16Array(STATES);
    this.isRepG2 = new Uint16Array(STATES);
    this.isRep0Long = new Uint16Array(STATES * POS_STATES_MAX);
    this.posSlot = new Uint16Array(4 << 6); // one 6-bit tree per length class
    this.posSpecial = new Uint16Array(1 + FULL_DISTANCES - END_POS_MODEL_INDEX);
    this.align = new Uint16Array(1 << ALIGN_BITS);
    this.matchLength = new LengthModel();
    this.repLength = new LengthModel();
    this.resetState();
  }

  /**
   * Reads an LZMA properties byte ((pb * 5 + lp) * 9 + lc).
   * @param {number} byte
   */
  setProperties(byte) {
    if (byte >= 9 * 5 * 5) throw invalid(`LZMA properties byte ${byte} out of range`);
    this.lc = byte % 9;
    this.lp = Math.floor(byte / 9) % 5;
    this.pb = Math.floor(byte / 45);
    if (this.lc + this.lp > MAX_LC_PLUS_LP) throw invalid("LZMA2 properties with lc + lp > 4");
  }

  resetState() {
    for (const probs of [this.literal, this.isMatch, this.isRep, this.isRepG0, this.isRepG1, this.isRepG2,
      this.isRep0Long, this.posSlot, this.posSpecial, this.align]) probs.fill(PROB_INIT);
    this.matchLength.reset();
    this.repLength.reset();
    this.state = 0;
    this.reps = [0, 0, 0, 0]; // distances - 1 of the last four matches, most recent first
  }

  /**
   * The distance - 1 of a new match, given its length class.
   * @param {RangeDecoder} rc @param {number} length length - MATCH_MIN_LEN @returns {number} 0 .. 2^32 - 1
   */
  decodeDistance(rc, length) {
    const slot = rc.tree(this.posSlot, Math.min(length, 3) << 6, 6);
    if (slot < 4) return slot;
    const directBits = (slot >>> 1) - 1;
    const base = ((2 | (slot & 1)) << directBits) >>> 0;
    if (slot < END_POS_MODEL_INDEX) return base + rc.reverseTree(this.posSpecial, base - slot, directBits);
    const middle = rc.directBits(directBits - ALIGN_BITS) * (1 << ALIGN_BITS);
    return base + middle + rc.reverseTree(this.align, 0, ALIGN_BITS);
  }
}

/** The output array and where the current dictionary started in it. */
class Output {
  /** @param {number} limit @param {number} dictSize */
  constructor(limit, dictSize) {
    this.bytes = new Uint8Array(limit);
    this.pos = 0;
    this.dictStart = 0;
    this.dictSize = dictSize;
  }

  /** Fails unless `count` more bytes fit in the expected size. */
  reserve(count) {
    if (this.pos + count > this.bytes.length) {
      throw new LzmaError(LZMA_OVERFLOW, `stream gives more than ${this.bytes.length} bytes`);
    }
  }

  /** Copies `length` bytes from `distance + 1` back (the regions may overlap: that repeats a pattern). */
  copyMatch(distance, length, end) {
    if (distance >= this.pos - this.dictStart || distance >= this.dictSize) {
      throw invalid("LZMA match reaches before the start of the dictionary");
    }
    if (this.pos + length > end) throw invalid("LZMA match runs past the end of its chunk");
    const bytes = this.bytes;
    let from = this.pos - distance - 1;
    for (let i = 0; i < length; i++) bytes[this.pos++] = bytes[from++];
  }
}

/**
 * Decodes one LZMA chunk of `unpacked` bytes from `input[start, end)` into `out`, continuing `model`.
 * @param {LzmaModel} model @param {Output} out @param {Uint8Array} input
 * @param {number} start @param {number} end @param {number} unpacked
 */
function decodeLzmaChunk(model, out, input, start, end, unpacked) {
  const rc = new RangeDecoder(input, start, end);
  const bytes = out.bytes;
  const chunkEnd = out.pos + unpacked;
  const pbMask = (1 << model.pb) - 1;
  const lpMask = (1 << model.lp) - 1;
  const reps = model.reps;
  let state = model.state;
  while (out.pos < chunkEnd) {
    const pos = out.pos - out.dictStart; // position in the dictionary's stream, for the position states
    const posState = pos & pbMask;
    if (rc.bit(model.isMatch, (state << 4) + posState) === 0) {
      // Decoded before it is stored: the literal's model reads the byte before the current position.
      const literal = decodeLiteral(rc, model, bytes, out, pos & lpMask, state >= 7 ? reps[0] : -1);
      bytes[out.pos++] = literal;
      state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
      continue;
    }
    let length;
    if (rc.bit(model.isRep, state) === 0) {
      // A new distance; the older ones move down the list.
      length = model.matchLength.decode(rc, posState);
      reps[3] = reps[2];
      reps[2] = reps[1];
      reps[1] = reps[0];
      reps[0] = model.decodeDistance(rc, length);
      state = state < 7 ? 7 : 10;
    } else {
      if (out.pos === out.dictStart) throw invalid("LZMA repeated match in an empty dictionary");
      if (rc.bit(model.isRepG0, state) === 0) {
        if (rc.bit(model.isRep0Long, (state << 4) + posState) === 0) {
          // A "short rep": one byte at the last distance.
          state = state < 7 ? 9 : 11;
          out.copyMatch(reps[0], 1, chunkEnd);
          continue;
        }
      } else {
        // One of the three older distances moves to the front.
        let distance;
        if (rc.bit(model.isRepG1, state) === 0) {
          distance = reps[1];
        } else {
          if (rc.bit(model.isRepG2, state) === 0) {
            distance = reps[2];
          } else {
            distance = reps[3];
            reps[3] = reps[2];
          }
          reps[2] = reps[1];
        }
        reps[1] = reps[0];
        reps[0] = distance;
      }
      length = model.repLength.decode(rc, posState);
      state = state < 7 ? 8 : 11;
    }
    out.copyMatch(reps[0], length + MATCH_MIN_LEN, chunkEnd);
  }
  model.state = state;
  // The encoder flushes so that the decoder ends with code 0 on the chunk's last byte.
  if (rc.code !== 0 || rc.pos !== end) throw invalid("LZMA chunk does not end where its packed size says");
}

/**
 * One literal byte. After a match (`matchDistance` >= 0) the byte at the last distance steers the model
 * bit by bit until the first bit that differs from it.
 * @param {RangeDecoder} rc @param {LzmaModel} model @param {Uint8Array} bytes @param {Output} out
 * @param {number} lowPos the position's low `lp` bits @param {number} matchDistance @returns {number}
 */
function decodeLiteral(rc, model, bytes, out, lowPos, matchDistance) {
  const previous = out.pos > out.dictStart ? bytes[out.pos - 1] : 0;
  const probs = model.literal;
  const base = LITERAL_CODER_SIZE * ((lowPos << model.lc) + (previous >>> (8 - model.lc)));
  let symbol = 1;
  if (matchDistance >= 0) {
    if (matchDistance >= out.pos - out.dictStart) {
      throw invalid("LZMA match reaches before the start of the dictionary");
    }
    let matchByte = bytes[out.pos - matchDistance - 1];
    while (symbol < 0x100) {
      const matchBit = (matchByte >>> 7) & 1;
      matchByte <<= 1;
      const bit = rc.bit(probs, base + ((1 + matchBit) << 8) + symbol);
      symbol = (symbol << 1) | bit;
      if (bit !== matchBit) break;
    }
  }
  while (symbol < 0x100) symbol = (symbol << 1) | rc.bit(probs, base + symbol);
  return symbol & 0xff;
}

/**
 * Decodes a raw LZMA2 stream that must produce at most `limit` bytes and end with its 0x00 control byte.
 *
 * @param {Uint8Array} input the stream (it may be followed by other bytes: see `consumed`)
 * @param {number} limit the most bytes it may produce
 * @param {number} dictSize the writer's dictionary size; no match may reach farther back
 * @returns {{output: Uint8Array, consumed: number}} the decoded bytes, and the input bytes up to and including
 *   the end byte
 * @throws {LzmaError} LZMA_TRUNCATED when the input ends before the end byte, LZMA_OVERFLOW beyond `limit`,
 *   LZMA_INVALID for anything else that is wrong
 */
export function decodeLzma2(input, limit, dictSize) {
  const out = new Output(limit, dictSize);
  const model = new LzmaModel();
  let pos = 0;
  let needDictReset = true;
  let needProperties = true;
  const need = (count) => {
    if (pos + count > input.length) throw new LzmaError(LZMA_TRUNCATED, "stream ends before its end byte");
  };
  for (;;) {
    need(1);
    const control = input[pos++];
    if (control === 0x00) return { output: out.bytes.subarray(0, out.pos), consumed: pos };
    if (control >= 0xe0 || control === 0x01) {
      out.dictStart = out.pos;
      needDictReset = false;
      needProperties = true; // liblzma's rule: a new dictionary needs new properties before LZMA data
    } else if (needDictReset) {
      throw invalid(`LZMA2 stream starts with control byte 0x${control.toString(16)}, not a dictionary reset`);
    }
    if (control < 0x80) {
      if (control > 0x02) throw invalid(`LZMA2 control byte 0x${control.toString(16)} is not defined`);
      need(2);
      const size = ((input[pos] << 8) | input[pos + 1]) + 1;
      pos += 2;
      need(size);
      out.reserve(size);
      out.bytes.set(input.subarray(pos, pos + size), out.pos);
      out.pos += size;
      pos += size;
      continue;
    }
    const reset = (control >>> 5) & 3;
    need(4);
    const unpacked = (control & 0x1f) * 65536 + ((input[pos] << 8) | input[pos + 1]) + 1;
    const packed = ((input[pos + 2] << 8) | input[pos + 3]) + 1;
    pos += 4;
    if (reset >= 2) {
      need(1);
      model.setProperties(input[pos++]);
      needProperties = false;
    } else if (needProperties) {
      throw invalid("LZMA2 chunk without the properties its dictionary reset requires");
    }
    if (reset >= 1) model.resetState();
    need(packed);
    out.reserve(unpacked);
    decodeLzmaChunk(model, out, input, pos, pos + packed, unpacked);
    pos += packed;
  }
}

/**
 * The dictionary size the writer used for `rawLength` bytes: the power of two >= it, clamped to [4 KiB, 64 MiB]
 * (vqrf/compress/container.py, `_lzma_filters`).
 * @param {number} rawLength @returns {number}
 */
export function lzmaDictSize(rawLength) {
  let size = 4096;
  while (size < rawLength && size < 64 * 1024 * 1024) size *= 2;
  return size;
}
