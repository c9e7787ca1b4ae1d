// Face alignment: a port of deocc_jax/faces/landmarks.py and align.py.
//
// A matrix is a 2x3 map [a, b, c, d, e, f] from photo pixels to crop pixels,
// as in align.py: crop = paddedCrop(image, w, h, M, R).image, the crop every
// deocc model was trained on and is run on. It is a similarity for every real
// face, and an affine for a stretched picture's (unstretchMatrix); everything
// that uses a matrix here and in blend.js handles both.

import {
  gaussianBlur, invertAffine, medianColour, resizeArea, roundHalfEven, warpAffine,
} from "./imgproc.js";

// MediaPipe face-mesh indices (landmarks.py).
export const LEFT_EYE_CORNERS = [33, 133];
export const RIGHT_EYE_CORNERS = [263, 362];
export const NOSE_TIP = 1;
export const MOUTH_LEFT = 61;
export const MOUTH_RIGHT = 291;
export const LEFT_CHEEK = 234;
export const RIGHT_CHEEK = 454;
export const FOREHEAD = 10;
export const CHIN = 152;

// align.MAX_FACE_ASPECT: no real face is wider (cheek to cheek) than tall
// (forehead to chin); a wider one is a stretched picture (see align.py).
export const MAX_FACE_ASPECT = 1.0;

// FFHQ 5-point template at 512 px divided by 512 (align.TEMPLATE_5).
export const TEMPLATE_5 = [
  [192.98138, 239.94708],
  [318.90277, 240.19360],
  [256.63416, 314.01935],
  [201.26117, 371.41043],
  [313.08905, 371.15118],
].map(([x, y]) => [x / 512.0, y / 512.0]);

/**
 * MediaPipe's normalised landmarks in photo pixels, as deocc_jax.faces.detect
 * stores them: (x * width, y * height) rounded to float32.
 *
 * @param {{x: number, y: number}[]} normalized one face's landmarks.
 * @returns {number[][]} [[x, y], ...].
 */
export function pixelLandmarks(normalized, width, height) {
  return normalized.map((p) => [Math.fround(p.x * width), Math.fround(p.y * height)]);
}

/** landmarks.five_points: left eye, right eye, nose tip, mouth corners. */
export function fivePoints(lm) {
  const mid = ([i, j]) => [(lm[i][0] + lm[j][0]) / 2, (lm[i][1] + lm[j][1]) / 2];
  return [mid(LEFT_EYE_CORNERS), mid(RIGHT_EYE_CORNERS), lm[NOSE_TIP], lm[MOUTH_LEFT],
    lm[MOUTH_RIGHT]].map((p) => [p[0], p[1]]);
}

/**
 * align.umeyama_similarity: least-squares rotation + uniform scale +
 * translation mapping src to dst.
 *
 * In 2-D Umeyama's SVD solution (including its reflection correction) has a
 * closed form: the rotation angle is atan2(c10 - c01, c00 + c11) of the
 * cross-covariance C = sum(d s^T) / n and the scale is
 * hypot(c00 + c11, c10 - c01) / var(s), which equals
 * trace(diag(sigma) S) / var(s) for both signs of det(C).
 */
export function umeyamaSimilarity(src, dst) {
  const n = src.length;
  const mean = (pts) => [pts.reduce((s, p) => s + p[0], 0) / n, pts.reduce((s, p) => s + p[1], 0) / n];
  const ms = mean(src), md = mean(dst);
  let c00 = 0, c01 = 0, c10 = 0, c11 = 0, varS = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i][0] - ms[0], sy = src[i][1] - ms[1];
    const dx = dst[i][0] - md[0], dy = dst[i][1] - md[1];
    c00 += dx * sx; c01 += dx * sy; c10 += dy * sx; c11 += dy * sy;
    varS += sx * sx + sy * sy;
  }
  const p = (c00 + c11) / n, q = (c10 - c01) / n;
  varS /= n;
  const norm = Math.hypot(p, q);
  const cos = p / norm, sin = q / norm;
  const scale = norm / varS;
  const a = scale * cos, b = -scale * sin, d = scale * sin, e = scale * cos;
  return [a, b, md[0] - (a * ms[0] + b * ms[1]), d, e, md[1] - (d * ms[0] + e * ms[1])];
}

// Euclidean distance as numpy's norm of the difference (sqrt of the dot product).
function distance(p, q) {
  const dx = q[0] - p[0], dy = q[1] - p[1];
  return Math.sqrt(dx * dx + dy * dy);
}

/** align.face_aspect: cheek-to-cheek over forehead-to-chin distance of the landmarks. */
export function faceAspect(lm) {
  return distance(lm[LEFT_CHEEK], lm[RIGHT_CHEEK]) / Math.max(distance(lm[FOREHEAD], lm[CHIN]), 1e-9);
}

/**
 * align.unstretch_matrix: the affine squeezing a face wider than `maxAspect`
 * back to it along the cheek-to-cheek line, about the centre of the four
 * points (else the identity).
 */
export function unstretchMatrix(lm, maxAspect = MAX_FACE_ASPECT) {
  const aspect = faceAspect(lm);
  if (aspect <= maxAspect) return [1, 0, 0, 0, 1, 0];
  const l = lm[LEFT_CHEEK], r = lm[RIGHT_CHEEK];
  const length = distance(l, r);
  const ux = (r[0] - l[0]) / length, uy = (r[1] - l[1]) / length;
  const k = maxAspect / aspect - 1.0;
  const a = 1 + k * ux * ux, b = k * ux * uy, d = k * uy * ux, e = 1 + k * uy * uy;
  const pts = [lm[LEFT_CHEEK], lm[RIGHT_CHEEK], lm[FOREHEAD], lm[CHIN]];
  const cx = (pts[0][0] + pts[1][0] + pts[2][0] + pts[3][0]) / 4;
  const cy = (pts[0][1] + pts[1][1] + pts[2][1] + pts[3][1]) / 4;
  return [a, b, cx - (a * cx + b * cy), d, e, cy - (d * cx + e * cy)];
}

/** align.compose: the 2x3 matrix of `outer` applied after `inner`. */
export function compose(outer, inner) {
  const [a, b, c, d, e, f] = outer, [p, q, r, s, t, u] = inner;
  return [a * p + b * s, a * q + b * t, (a * r + b * u) + c,
    d * p + e * s, d * q + e * t, (d * r + e * u) + f];
}

/**
 * align.alignment_matrix: photo pixels -> resolution^2 aligned crop. A
 * similarity fit of the five points to the template, after unstretchMatrix
 * (nothing for a real face; a squeeze for a stretched picture's, which makes
 * the matrix an affine).
 */
export function alignmentMatrix(landmarks, resolution) {
  const template = TEMPLATE_5.map(([x, y]) => [x * resolution, y * resolution]);
  const five = fivePoints(landmarks);
  if (faceAspect(landmarks) <= MAX_FACE_ASPECT) return umeyamaSimilarity(five, template);
  const m = unstretchMatrix(landmarks);
  const squeezed = five.map(([x, y]) => [(x * m[0] + y * m[1]) + m[2], (x * m[3] + y * m[4]) + m[5]]);
  return compose(umeyamaSimilarity(squeezed, template), m);
}

/** align.matrix_scale: crop pixels per photo pixel (an affine's geometric mean). */
export function matrixScale(m) {
  return Math.sqrt(Math.abs(m[0] * m[4] - m[1] * m[3]));
}

/** align.transform_landmarks: applies m to [[x, y]...]; float32 results. */
export function transformPoints(points, m) {
  return points.map(([x, y]) => [Math.fround(m[0] * x + m[1] * y + m[2]),
    Math.fround(m[3] * x + m[4] * y + m[5])]);
}

export { invertAffine };

/**
 * align.warp_to_crop: the aligned crop of an RGB image.
 *
 * Large downscales (scale < 0.5) first shrink the photo with area averaging,
 * as the Python path does, so a small crop of a big frame is not aliased.
 *
 * @param {Uint8Array} rgb photo, 3 channels.
 * @param {string} border "reflect101" (the default, as align.py) or "constant" (zero).
 * @returns {Uint8Array} resolution^2 x 3 crop.
 */
export function warpToCrop(rgb, width, height, m, resolution, border = "reflect101") {
  const scale = matrixScale(m);
  let image = rgb, w = width, h = height, mat = m;
  if (scale < 0.5) {
    const f = 2.0 * scale;
    const sw = Math.max(1, roundHalfEven(width * f)), sh = Math.max(1, roundHalfEven(height * f));
    image = resizeArea(rgb, width, height, 3, sw, sh);
    const fx = sw / width, fy = sh / height;
    // crop = M @ image_pt = M @ diag(1/fx, 1/fy) @ small_pt
    const ix = 1 / fx, iy = 1 / fy;
    mat = [m[0] * ix, m[1] * iy, m[2], m[3] * ix, m[4] * iy, m[5]];
    w = sw; h = sh;
  }
  return warpAffine(image, w, h, 3, mat, resolution, resolution, { border });
}

/**
 * Photo (x, y) of crop pixel (x, y): the inverse matrix applied in
 * align._crop_to_source's order, (a x + b y) + c, so the doubles are numpy's.
 */
function cropToSource(inv, x, y) {
  return [inv[0] * x + inv[1] * y + inv[2], inv[3] * x + inv[4] * y + inv[5]];
}

/** align.padding_fraction: share of the crop's pixel centres outside the photo. */
export function paddingFraction(m, width, height, resolution) {
  const inv = invertAffine(m);
  let outside = 0;
  for (let y = 0; y < resolution; y++) {
    for (let x = 0; x < resolution; x++) {
      const [sx, sy] = cropToSource(inv, x, y);
      if (sx < -0.5 || sx > width - 0.5 || sy < -0.5 || sy > height - 0.5) outside += 1;
    }
  }
  return outside / (resolution * resolution);
}

/**
 * align.padded_crop: the aligned crop, its part beyond the photo filled as
 * FFHQ's alignment does it (and as every training crop was made).
 *
 * In crop pixels: the photo is reflected (BORDER_REFLECT_101), blurred with a
 * Gaussian of sigma 0.02 R by clip(3 ramp + 1) and faded to the photo's
 * median colour by clip(ramp), where the ramp is 0 at the photo's edge, 1 a
 * pad width (at least 0.3 crop sides) outside it and negative inside. Crops
 * that stay more than 4 photo pixels inside the photo are plain warps
 * (warpToCrop). The blend runs in float32 as numpy does (one rounding per
 * operation), so the result is Python's byte for byte but where the two
 * Gaussian blurs' last bits put a value on the other side of a .5.
 *
 * @param {Uint8Array} rgb photo, 3 channels.
 * @returns {{image: Uint8Array, paddingFraction: number}} the R^2 x 3 crop and
 *   the share of its pixels outside the photo.
 */
export function paddedCrop(rgb, width, height, m, resolution) {
  const f = Math.fround;
  const r = resolution, w = width, h = height;
  const qsize = r / matrixScale(m);            // the crop's side in photo pixels
  const inv = invertAffine(m);
  let lox = Infinity, loy = Infinity, hix = -Infinity, hiy = -Infinity;
  for (const [cx, cy] of [[-0.5, -0.5], [r - 0.5, -0.5], [r - 0.5, r - 0.5], [-0.5, r - 0.5]]) {
    const [x, y] = cropToSource(inv, cx, cy);
    lox = Math.min(lox, x); loy = Math.min(loy, y); hix = Math.max(hix, x); hiy = Math.max(hiy, y);
  }
  const border = Math.max(roundHalfEven(qsize * 0.1), 3);
  let pad = [-Math.floor(lox) + border, -Math.floor(loy) + border,
    Math.ceil(hix) - w + border, Math.ceil(hiy) - h + border].map((v) => Math.max(v, 0));
  const fraction = paddingFraction(m, w, h, r);
  if (Math.max(...pad) <= border - 4) {
    return { image: warpToCrop(rgb, w, h, m, r), paddingFraction: fraction };
  }
  const minPad = roundHalfEven(qsize * 0.3);
  pad = pad.map((v) => Math.max(v, minPad));   // photo pixels: left, top, right, bottom
  const sigma = 0.02 * r;
  // A canvas grown by 3 sigma on each side, so the blur near the crop's edge
  // sees fill rather than a border.
  const margin = Math.ceil(3 * sigma);
  const big = r + 2 * margin;
  const canvas = Float32Array.from(
    warpToCrop(rgb, w, h, [m[0], m[1], m[2] + margin, m[3], m[4], m[5] + margin], big));
  const blurred = gaussianBlur(canvas, big, big, sigma, 3);
  const median = medianColour(rgb, w, h, 3);
  const clip01 = (v) => (v < 0 ? 0 : (v > 1 ? 1 : v));
  const out = new Uint8Array(r * r * 3);
  for (let y = 0; y < r; y++) {
    for (let x = 0; x < r; x++) {
      const [sx, sy] = cropToSource(inv, x, y);
      const ramp = f(Math.max(Math.max(-sx / pad[0], (sx - (w - 1)) / pad[2]),
        Math.max(-sy / pad[1], (sy - (h - 1)) / pad[3])));
      const toBlur = clip01(f(f(ramp * 3) + 1)), toMedian = clip01(ramp);
      const i = ((y + margin) * big + x + margin) * 3, o = (y * r + x) * 3;
      for (let c = 0; c < 3; c++) {
        let v = canvas[i + c];
        v = f(v + f(f(blurred[i + c] - v) * toBlur));
        v = f(v + f(f(median[c] - v) * toMedian));
        const q = roundHalfEven(v);
        out[o + c] = q < 0 ? 0 : (q > 255 ? 255 : q);
      }
    }
  }
  return { image: out, paddingFraction: fraction };
}
