/**
 * The rANS decoder of the container's `ans` coder (docs/format.md, "Coders", `ans`): constriction's
 * `AnsCoder` with a `Categorical(perfect=False)` model of 24-bit probabilities, 32-bit words, 64-bit state.
 *
 * JavaScript numbers hold 53-bit integers exactly, so the 64-bit state is kept as two unsigned 32-bit halves
 * (`hi`, `lo`) and each step's 24-bit by 40-bit product is formed from pieces that stay below 2^53.
 *
 * @module ans
 */

const PRECISION = 24;
const ONE = 2 ** PRECISION; // probabilities are counts of 1 / 2^24
const Q_MASK = ONE - 1;
const TWO_32 = 2 ** 32;
const TWO_20 = 2 ** 20;
const TWO_12 = 2 ** 12;

/**
 * The cumulative table of the static model of a histogram, exactly as constriction 0.5.0 quantises it:
 * `cdf[s] = floor(double(count[0] + ... + count[s-1]) * double(2^24 - K) / double(n)) + s`, `cdf[K] = 2^24`.
 * Every symbol, seen or not, gets at least one of the 2^24 slots.
 *
 * @param {Float64Array} counts [K] the histogram (K >= 2), integers summing to n
 * @returns {Uint32Array} [K + 1] cdf, strictly increasing from 0 to 2^24
 */
export function ansModel(counts) {
  const k = counts.length;
  let n = 0;
  for (let s = 0; s < k; s++) n += counts[s];
  const scale = (ONE - k) / n; // one rounded division of two exact doubles, as the reference does
  const cdf = new Uint32Array(k + 1);
  let cumulative = 0;
  for (let s = 0; s < k; s++) {
    cdf[s] = Math.floor(cumulative * scale) + s;
    cumulative += counts[s];
  }
  cdf[k] = ONE;
  return cdf;
}

/**
 * The symbol whose slot range holds `q`: the largest `s` with `cdf[s] <= q`.
 * @param {Uint32Array} cdf @param {number} q @returns {number}
 */
function findSymbol(cdf, q) {
  let low = 0;
  let high = cdf.length - 2; // the last symbol
  while (low < high) {
    const mid = (low + high + 1) >>> 1;
    if (cdf[mid] <= q) low = mid;
    else high = mid - 1;
  }
  return low;
}

/**
 * Decodes `n` symbols from constriction's compressed words (a stack: the last word is read first).
 *
 * @param {Uint32Array} words [W] the payload's words, in file order
 * @param {Uint32Array} cdf [K + 1] from `ansModel`
 * @param {number} n how many symbols to decode
 * @returns {{symbols: Uint16Array, empty: boolean}} [n] symbols in 0..K-1, and whether the coder ended empty
 *   (state 0 and no words left), as a valid stream does
 */
export function ansDecode(words, cdf, n) {
  const symbols = new Uint16Array(n);
  let top = words.length; // words[0 .. top) are still on the stack
  let hi = 0;
  let lo = 0;
  if (top > 0) lo = words[--top];
  if (top > 0) {
    hi = lo;
    lo = words[--top];
  }
  for (let i = 0; i < n; i++) {
    const q = lo & Q_MASK;
    const s = findSymbol(cdf, q);
    const start = cdf[s];
    const freq = cdf[s + 1] - start;
    // state = freq * (state >> 24) + q - start, which stays below freq * 2^40 <= 2^64.
    // state >> 24 = xh * 2^20 + xl with xh, xl < 2^20, so each partial product is < 2^44.
    const xh = hi >>> 12;
    const xl = (hi & 0xfff) * 256 + (lo >>> 24);
    const low = freq * xl + (q - start);
    const high = freq * xh; // contributes high * 2^20 = highTop * 2^32 + highBottom * 2^20
    const highBottom = high % TWO_12;
    const sum = highBottom * TWO_20 + low; // < 2^46
    const carry = Math.floor(sum / TWO_32);
    lo = sum - carry * TWO_32;
    hi = (high - highBottom) / TWO_12 + carry;
    if (hi === 0 && top > 0) {
      hi = lo;
      lo = words[--top];
    }
    symbols[i] = s;
  }
  return { symbols, empty: hi === 0 && lo === 0 && top === 0 };
}
