// One frame through deocc: align every face, run the model on the crops in
// one batch, paste each result back. The browser twin of
// deocc_jax.restoration.frames.restore_frame (without temporal stabilisation).

import { alignmentMatrix, paddedCrop } from "./geometry.js";
import { blendAlphaCrop, MIN_COMPONENT_FRAC, pasteFace } from "./blend.js";

/** RGBA bytes (canvas ImageData) -> RGB bytes. */
export function rgbaToRgb(rgba, width, height) {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    rgb[i * 3] = rgba[j];
    rgb[i * 3 + 1] = rgba[j + 1];
    rgb[i * 3 + 2] = rgba[j + 2];
  }
  return rgb;
}

/** RGB bytes -> opaque RGBA bytes (for putImageData). */
export function rgbToRgba(rgb, width, height) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    rgba[j] = rgb[i * 3];
    rgba[j + 1] = rgb[i * 3 + 1];
    rgba[j + 2] = rgb[i * 3 + 2];
    rgba[j + 3] = 255;
  }
  return rgba;
}

/**
 * Restores every face of one RGB image.
 *
 * @param {Uint8Array} rgb the photo (width*height*3); not modified.
 * @param {number[][][]} faces one [[x, y] * 478] pixel landmark list per face.
 * @param {number} resolution the model's crop side R.
 * @param {(crops: Uint8Array, n: number) => Promise<{deoccluded: Uint8Array, mask: Float32Array}>} runModel
 *   runs the model on n crops packed as uint8 [n, R, R, 3].
 * @returns {Promise<{rgb: Uint8Array, matrices: number[][], padding: number[], blended: number,
 *   ms: object}>} the restored photo, the photo->crop matrix of each face, the
 *   share of each crop that lies beyond the photo (filled as in training), the
 *   number of pixels given a non-zero blend weight, and stage times in milliseconds.
 */
export async function restoreFaces(rgb, width, height, faces, resolution, runModel) {
  const r = resolution, n = faces.length;
  const out = Uint8Array.from(rgb);
  const ms = { align: 0, model: 0, blend: 0 };
  if (n === 0) return { rgb: out, matrices: [], padding: [], blended: 0, ms };
  let t = performance.now();
  const matrices = faces.map((lm) => alignmentMatrix(lm, r));
  const crops = new Uint8Array(n * r * r * 3);
  const padding = matrices.map((m, i) => {
    // Padded like the training crops where the face's crop reaches past the photo.
    const crop = paddedCrop(rgb, width, height, m, r);
    crops.set(crop.image, i * r * r * 3);
    return crop.paddingFraction;
  });
  ms.align = performance.now() - t;
  t = performance.now();
  const { deoccluded, mask } = await runModel(crops, n);
  ms.model = performance.now() - t;
  t = performance.now();
  let blended = 0;
  for (let i = 0; i < n; i++) {
    // Faces are pasted one after the other, each onto the previous result.
    const alpha = blendAlphaCrop(mask.subarray(i * r * r, (i + 1) * r * r), r, MIN_COMPONENT_FRAC);
    const restored = deoccluded.subarray(i * r * r * 3, (i + 1) * r * r * 3);
    blended += pasteFace(out, width, height, restored, alpha, matrices[i], r);
  }
  ms.blend = performance.now() - t;
  return { rgb: out, matrices, padding, blended, ms };
}
