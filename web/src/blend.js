// Blending a restored crop back into the photo: a port of
// deocc_jax/restoration/blend.py (blend_alpha_crop, crop_roi, paste_face).

import { affineSampler, dilateEllipse, gaussianBlur, roundHalfEven, warpAffine } from "./imgproc.js";
import { invertAffine, transformPoints } from "./geometry.js";

// restoration.blend's constants, in units of the crop side.
export const MASK_THRESHOLD = 0.5;
export const DILATE_FRAC = 0.03;
export const FEATHER_FRAC = 0.015;
export const MIN_ALPHA = 1.0 / 512.0;
export const MIN_COMPONENT_FRAC = 0.015;

/**
 * blend.gate_mask: the harm gate. `hard` (0/1, R*R) without its 8-connected
 * regions smaller than `minComponentFrac` of the crop (returns a new array).
 */
export function gateMask(hard, r, minComponentFrac = MIN_COMPONENT_FRAC) {
  if (minComponentFrac <= 0) return hard;
  const out = new Uint8Array(hard.length);
  const seen = new Uint8Array(hard.length);
  const stack = new Int32Array(hard.length);
  const minArea = minComponentFrac * hard.length;
  for (let start = 0; start < hard.length; start++) {
    if (!hard[start] || seen[start]) continue;
    // Flood one region, remembering its pixels in `stack`.
    let top = 0, n = 0;
    stack[top++] = start;
    seen[start] = 1;
    const members = [];
    while (top > 0) {
      const i = stack[--top];
      members.push(i);
      n++;
      const y = Math.floor(i / r), x = i - y * r;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const yy = y + dy, xx = x + dx;
          if ((dy || dx) && yy >= 0 && yy < r && xx >= 0 && xx < r) {
            const j = yy * r + xx;
            if (hard[j] && !seen[j]) { seen[j] = 1; stack[top++] = j; }
          }
        }
      }
    }
    if (n >= minArea) for (const i of members) out[i] = 1;
  }
  return out;
}

/**
 * blend.blend_alpha_crop: feathered blend weights in crop space.
 *
 * The predicted mask (> MASK_THRESHOLD) is grown by DILATE_FRAC plus two
 * feather sigmas, blurred with a Gaussian of sigma FEATHER_FRAC, and ramped
 * to 0 over three sigmas next to the crop border.
 *
 * @param {Float32Array} mask R*R occlusion probability.
 * @param {number} resolution R.
 * @param {number} minComponentFrac the harm gate (gateMask); 0: none.
 * @returns {Float32Array} R*R weights in [0, 1].
 */
export function blendAlphaCrop(mask, resolution, minComponentFrac = 0) {
  const r = resolution;
  let hard = new Uint8Array(r * r);
  for (let i = 0; i < r * r; i++) hard[i] = mask[i] > MASK_THRESHOLD ? 1 : 0;
  hard = gateMask(hard, r, minComponentFrac);
  // Python computes these in float64 from float32-free constants.
  const sigma = Math.max(FEATHER_FRAC * r, 0.5);
  const grow = Math.max(1, roundHalfEven(DILATE_FRAC * r + 2 * sigma));
  const grown = dilateEllipse(hard, r, r, 2 * grow + 1);
  const alpha = gaussianBlur(Float32Array.from(grown), r, r, sigma);
  const ramp = new Float64Array(r);
  for (let i = 0; i < r; i++) ramp[i] = Math.min(Math.max((i + 0.5) / (3 * sigma), 0), 1);
  for (let i = 0; i < r; i++) ramp[i] = Math.min(ramp[i], ramp[r - 1 - i]);
  for (let y = 0; y < r; y++) {
    for (let x = 0; x < r; x++) {
      const i = y * r + x;
      alpha[i] = alpha[i] * Math.min(ramp[y], ramp[x]);  // stored as float32, as numpy's *=
      if (alpha[i] < MIN_ALPHA) alpha[i] = 0;
    }
  }
  return alpha;
}

/** blend.crop_roi: [x0, y0, x1, y1] of the photo region a crop falls in. */
export function cropRoi(m, resolution, width, height) {
  const r = resolution;
  const pts = transformPoints([[0, 0], [r, 0], [0, r], [r, r]], invertAffine(m));
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.floor(Math.min(...xs)) - 1, y0 = Math.floor(Math.min(...ys)) - 1;
  const x1 = Math.ceil(Math.max(...xs)) + 1, y1 = Math.ceil(Math.max(...ys)) + 1;
  return [Math.max(0, x0), Math.max(0, y0), Math.min(width, x1), Math.min(height, y1)];
}

/** blend.roi_matrix: photo->crop matrix for a sub-image whose origin is (x0, y0). */
export function roiMatrix(m, x0, y0) {
  return [m[0], m[1], m[0] * x0 + m[1] * y0 + m[2], m[3], m[4], m[3] * x0 + m[4] * y0 + m[5]];
}

/**
 * blend.paste_face: blends a restored crop into the photo in place.
 *
 * Only the crop's footprint is warped. Where the warped weight is 0 the photo
 * keeps its bytes exactly.
 *
 * @param {Uint8Array} rgb photo (3 channels), modified in place.
 * @param {Uint8Array} restored R*R*3 model output.
 * @param {Float32Array} alphaCrop R*R blend weights.
 * @param {number[]} m the photo->crop matrix used for the crop.
 * @returns {number} the number of photo pixels that got a non-zero weight.
 */
export function pasteFace(rgb, width, height, restored, alphaCrop, m, resolution) {
  const [x0, y0, x1, y1] = cropRoi(m, resolution, width, height);
  if (x1 <= x0 || y1 <= y0) return 0;
  const rw = x1 - x0, rh = y1 - y0;
  const mr = roiMatrix(m, x0, y0);
  const opts = { inverseMap: true, border: "constant" };
  const alpha = warpAffine(alphaCrop, resolution, resolution, 1, mr, rw, rh, opts);
  // The restored crop is sampled only where the weight is not 0: the same
  // values warp_back gives there, without warping the rest of the footprint.
  const sampleRestored = affineSampler(restored, resolution, resolution, 3, mr, opts);
  const px = new Uint8Array(3);
  let count = 0;
  const f = Math.fround;
  for (let y = 0; y < rh; y++) {
    for (let x = 0; x < rw; x++) {
      const a = alpha[y * rw + x];
      if (!(a >= MIN_ALPHA)) continue;
      count++;
      sampleRestored(x, y, px, 0);
      const o = ((y + y0) * width + (x + x0)) * 3;
      for (let k = 0; k < 3; k++) {
        // float32 arithmetic, as numpy's orig + alpha * (restored - orig).
        const orig = rgb[o + k];
        const mixed = f(orig + f(a * (px[k] - orig)));
        rgb[o + k] = Math.min(255, Math.max(0, roundHalfEven(mixed)));
      }
    }
  }
  return count;
}
