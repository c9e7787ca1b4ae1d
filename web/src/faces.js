// The second stage of face finding, as the Python pipeline runs it on photos:
// a port of deocc_jax/faces/blazeface.py (full-range BlazeFace: letterbox,
// tiles, anchors, decoding, weighted NMS), mesh.py (the landmark model on an
// upright crop) and cascade.py (which detections are faces), combined as
// detect.FaceAnalyzer does: `find` for photos, `findVideo` for camera frames.
//
// MediaPipe's face landmarker (the first stage) misses small, turned and
// covered faces. Both models of this stage run in onnxruntime-web (converted
// from MediaPipe's .tflite files by deocc_jax/serving/web_models.py), and
// every threshold comes from the server's config.json (`faces.settings`),
// which reads it from the Python modules: the two finders share their numbers.
//
// Points are [x, y] in photo pixels; boxes [x0, y0, x1, y1]; images RGB bytes.

import { transformPoints, warpToCrop } from "./geometry.js";
import { invertAffine, resizeArea, roundHalfEven } from "./imgproc.js";

export const LANDMARKER = "landmarker";
export const FULL_RANGE = "full_range";
export const NONE_DETECTED = "none detected";
export const REJECTED = "detections rejected as not a face";
export const TOO_SMALL = "all below --min_face_px";

// ---------------------------------------------------------------- blazeface.py

/** blazeface.anchors: [x0, y0, x1, y1, ...] centres in [0, 1], row-major over the grid. */
export function anchors(grid) {
  const a = new Float32Array(grid * grid * 2);
  for (let y = 0; y < grid; y++) {
    for (let x = 0; x < grid; x++) {
      a[(y * grid + x) * 2] = (x + 0.5) / grid;
      a[(y * grid + x) * 2 + 1] = (y + 0.5) / grid;
    }
  }
  return a;
}

/** blazeface.sigmoid_scores: scores of raw logits, clipped at +-clip. */
export function sigmoidScores(logits, clip) {
  return Float32Array.from(logits, (v) => 1 / (1 + Math.exp(-Math.min(Math.max(v, -clip), clip))));
}

/**
 * blazeface.decode_boxes for one anchor: box and keypoints in the input's [0, 1] coordinates.
 *
 * @param {Float32Array} reg regressors [N, 4 + 2k]; row `i` is decoded.
 */
export function decodeOne(reg, i, anchorXY, s) {
  const n = 4 + 2 * s.num_keypoints, o = i * n, size = s.input_size;
  const ax = anchorXY[i * 2], ay = anchorXY[i * 2 + 1];
  const cx = ax + reg[o] / size, cy = ay + reg[o + 1] / size;
  const hw = reg[o + 2] / size / 2, hh = reg[o + 3] / size / 2;
  const keypoints = [];
  for (let k = 0; k < s.num_keypoints; k++) {
    keypoints.push([ax + reg[o + 4 + 2 * k] / size, ay + reg[o + 5 + 2 * k] / size]);
  }
  return { box: [cx - hw, cy - hh, cx + hw, cy + hh], keypoints };
}

function area(b) {
  return Math.max(b[2] - b[0], 0) * Math.max(b[3] - b[1], 0);
}

/** blazeface.box_iou for two boxes. */
export function boxIou(a, b) {
  const ix = Math.max(Math.min(a[2], b[2]) - Math.max(a[0], b[0]), 0);
  const iy = Math.max(Math.min(a[3], b[3]) - Math.max(a[1], b[1]), 0);
  const inter = ix * iy, union = area(a) + area(b) - inter;
  return union > 0 ? inter / Math.max(union, 1e-12) : 0;
}

/**
 * blazeface.weighted_nms: overlapping detections (IoU > iou with the best one)
 * averaged with their scores as weights; each keeps its best score. Best first.
 *
 * @param {{box: number[], keypoints: number[][], score: number}[]} dets
 */
export function weightedNms(dets, iou) {
  // A stable sort, as numpy's argsort(kind="stable").
  let remaining = dets.map((d, i) => i).sort((i, j) => dets[j].score - dets[i].score || i - j);
  const out = [];
  while (remaining.length) {
    const best = dets[remaining[0]];
    const group = remaining.filter((i, k) => k === 0 || boxIou(best.box, dets[i].box) > iou);
    const total = group.reduce((s, i) => s + dets[i].score, 0);
    const box = [0, 0, 0, 0], keypoints = best.keypoints.map(() => [0, 0]);
    for (const i of group) {
      const w = dets[i].score / total;
      dets[i].box.forEach((v, k) => { box[k] += v * w; });
      dets[i].keypoints.forEach(([x, y], k) => { keypoints[k][0] += x * w; keypoints[k][1] += y * w; });
    }
    out.push({ box, keypoints, score: best.score });
    const taken = new Set(group);
    remaining = remaining.filter((i) => !taken.has(i));
  }
  return out;
}

/**
 * cv2.resize(INTER_LINEAR) of RGB bytes, OpenCV's mapping and 11-bit fixed-point weights
 * (its scalar path; its vector path may round a value the other way).
 */
export function resizeLinear(src, sw, sh, dw, dh) {
  const table = (ssize, dsize) => {
    const scale = ssize / dsize, ofs = new Int32Array(dsize * 2), w = new Int32Array(dsize * 2);
    for (let d = 0; d < dsize; d++) {
      let fx = (d + 0.5) * scale - 0.5, sx = Math.floor(fx);
      fx -= sx;
      if (sx < 0) { fx = 0; sx = 0; }
      if (sx >= ssize - 1) { fx = 0; sx = ssize - 1; }
      ofs[d * 2] = sx;
      ofs[d * 2 + 1] = Math.min(sx + 1, ssize - 1);
      w[d * 2] = roundHalfEven((1 - fx) * 2048);
      w[d * 2 + 1] = roundHalfEven(fx * 2048);
    }
    return { ofs, w };
  };
  const xt = table(sw, dw), yt = table(sh, dh);
  const rows = (sy) => {
    const r = new Int32Array(dw * 3);
    for (let x = 0; x < dw; x++) {
      const a = (sy * sw + xt.ofs[x * 2]) * 3, b = (sy * sw + xt.ofs[x * 2 + 1]) * 3;
      for (let k = 0; k < 3; k++) r[x * 3 + k] = src[a + k] * xt.w[x * 2] + src[b + k] * xt.w[x * 2 + 1];
    }
    return r;
  };
  const out = new Uint8Array(dw * dh * 3);
  for (let y = 0; y < dh; y++) {
    const r0 = rows(yt.ofs[y * 2]), r1 = rows(yt.ofs[y * 2 + 1]);
    const b0 = yt.w[y * 2], b1 = yt.w[y * 2 + 1];
    for (let i = 0; i < dw * 3; i++) {
      const v = Math.floor((r0[i] * b0 + r1[i] * b1 + (1 << 21)) / (1 << 22));
      out[y * dw * 3 + i] = v < 0 ? 0 : (v > 255 ? 255 : v);
    }
  }
  return out;
}

/**
 * blazeface.letterbox: the image fitted into size^2 keeping its aspect, centred on
 * black, as float32 in [-1, 1] ([1, size, size, 3]); its longer side size / shrink.
 *
 * @returns {{input: Float32Array, scale: number, padX: number, padY: number}}
 */
export function letterbox(rgb, w, h, size, shrink = 1) {
  const scale = size / shrink / Math.max(h, w);
  const nw = Math.max(1, roundHalfEven(w * scale)), nh = Math.max(1, roundHalfEven(h * scale));
  const small = scale < 1 ? resizeArea(rgb, w, h, 3, nw, nh) : resizeLinear(rgb, w, h, nw, nh);
  const px = Math.floor((size - nw) / 2), py = Math.floor((size - nh) / 2);
  const input = new Float32Array(size * size * 3).fill(-1);
  for (let y = 0; y < nh; y++) {
    for (let i = 0; i < nw * 3; i++) {
      input[((py + y) * size + px) * 3 + i] = small[y * nw * 3 + i] / 127.5 - 1;
    }
  }
  return { input, scale: nw / w, padX: px, padY: py };
}

/** blazeface.tiles: overlapping windows [x0, y0, x1, y1] covering a w x h image. */
export function tiles(w, h, side, overlap) {
  const starts = (n) => {
    if (n <= side) return [0];
    const step = side * (1 - overlap), k = Math.ceil((n - side) / step) + 1;
    return Array.from({ length: k }, (_, i) => roundHalfEven(i * (n - side) / (k - 1)));
  };
  const out = [];
  for (const y of starts(h)) {
    for (const x of starts(w)) out.push([x, y, Math.min(x + side, w), Math.min(y + side, h)]);
  }
  return out;
}

/** blazeface.tile_sides: tile sizes, smallest first, that show every face >= minFacePx. */
export function tileSides(w, h, minFacePx, s) {
  const longest = Math.max(w, h), sides = [];
  if (minFacePx <= 0) return sides;
  let side = Math.max(s.input_size, Math.ceil(minFacePx * s.input_size / s.min_input_face_px));
  while (side < longest) {
    sides.push(side);
    side = Math.floor(side / s.tile_overlap);
  }
  return sides;
}

function cropRgb(rgb, w, [x0, y0, x1, y1]) {
  const cw = x1 - x0, out = new Uint8Array(cw * (y1 - y0) * 3);
  for (let y = y0; y < y1; y++) out.set(rgb.subarray((y * w + x0) * 3, (y * w + x1) * 3), (y - y0) * cw * 3);
  return out;
}

/** The full-range BlazeFace on onnxruntime-web (blazeface.FullRangeDetector). */
export class FullRangeDetector {
  /**
   * @param {(input: Float32Array) => Promise<{regressors: Float32Array, logits: Float32Array}>} run
   *   one [1, S, S, 3] pass of the model.
   * @param {object} s config.faces.settings.detector.
   */
  constructor(run, s, { minScore, minFacePx = 0 }) {
    this.run = run;
    this.s = s;
    this.minScore = minScore;
    this.minFacePx = minFacePx;
    this.anchors = anchors(s.grid);
  }

  /** One letterboxed pass (letterbox's shrink): regressors, logits and the letterbox. */
  async raw(rgb, w, h, shrink = 1) {
    const lb = letterbox(rgb, w, h, this.s.input_size, shrink);
    const { regressors, logits } = await this.run(lb.input);
    return { regressors, logits, lb };
  }

  /** Decoded detections of raw outputs, scores >= minScore, in image pixels (before NMS). */
  candidates(regressors, logits, lb, x0 = 0, y0 = 0, maxSize = null) {
    const s = this.s, n = 4 + 2 * s.num_keypoints, size = s.input_size;
    const scores = sigmoidScores(logits, s.score_clip);
    const toImage = ([x, y]) => [(x * size - lb.padX) / lb.scale + x0, (y * size - lb.padY) / lb.scale + y0];
    const out = [];
    for (let i = 0; i < scores.length; i++) {
      if (!(scores[i] >= this.minScore)) continue;
      // A tile holds whole only faces up to its overlap; a coarser pass sees larger ones.
      if (maxSize !== null && Math.max(regressors[i * n + 2], regressors[i * n + 3]) / lb.scale > maxSize) continue;
      const d = decodeOne(regressors, i, this.anchors, s);
      const [a, b] = [toImage(d.box.slice(0, 2)), toImage(d.box.slice(2))];
      out.push({ box: [a[0], a[1], b[0], b[1]], keypoints: d.keypoints.map(toImage), score: scores[i] });
    }
    return out;
  }

  /** The one letterboxed pass over the whole image, before NMS (FullRangeDetector.whole_pass). */
  async wholePass(rgb, w, h, shrink = 1) {
    const r = await this.raw(rgb, w, h, shrink);
    return this.candidates(r.regressors, r.logits, r.lb);
  }

  /**
   * Faces in one RGB image, best first: [{box, keypoints, score}].
   *
   * @param {{minFacePx?: number, whole?: object[]}} opts the smallest face to search
   *   tiles for (default: the detector's), and `wholePass` of this image when already run.
   */
  async detect(rgb, w, h, { minFacePx = this.minFacePx, whole = null } = {}) {
    const dets = [...(whole || await this.wholePass(rgb, w, h))];
    for (const side of tileSides(w, h, minFacePx, this.s)) {
      for (const t of tiles(w, h, side, this.s.tile_overlap)) {
        const r = await this.raw(cropRgb(rgb, w, t), t[2] - t[0], t[3] - t[1]);
        dets.push(...this.candidates(r.regressors, r.logits, r.lb, t[0], t[1], this.s.tile_overlap * side));
      }
    }
    return weightedNms(dets, this.s.nms_iou);
  }
}

/** Detection.size: the box's longer side. */
export function detectionSize(det) {
  return Math.max(det.box[2] - det.box[0], det.box[3] - det.box[1]);
}

// ---------------------------------------------------------------- mesh.py

/** mesh.Roi.matrix: the 2x3 map [a, b, c, d, e, f] from photo to crop (continuous coordinates). */
export function roiMatrix(roi, size) {
  const s = size / roi.side, c = Math.cos(-roi.angle) * s, n = Math.sin(-roi.angle) * s;
  const [cx, cy] = roi.centre;
  return [c, -n, size / 2 - (c * cx - n * cy), n, c, size / 2 - (n * cx + c * cy)];
}

/** mesh.centre_convention: the same map for OpenCV's integer pixel centres. */
export function centreConvention(m) {
  return [m[0], m[1], m[2] + (m[0] + m[1]) * 0.5 - 0.5, m[3], m[4], m[5] + (m[3] + m[4]) * 0.5 - 0.5];
}

/** mesh.roi_from_points: MediaPipe's region of a box and two eye points. */
export function roiFromPoints(box, rightEye, leftEye, scale) {
  return {
    centre: [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
    side: Math.max(box[2] - box[0], box[3] - box[1]) * scale,
    angle: Math.atan2(leftEye[1] - rightEye[1], leftEye[0] - rightEye[0]),
  };
}

/** cascade.landmark_box: [x0, y0, x1, y1] of points. */
export function landmarkBox(pts) {
  const b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of pts) {
    b[0] = Math.min(b[0], x); b[1] = Math.min(b[1], y);
    b[2] = Math.max(b[2], x); b[3] = Math.max(b[3], y);
  }
  return b;
}

/** The end of detect.FaceAnalyzer._second_stage, for photos and frames alike: faces below
 * `minFacePx` are reported in `tooSmall`, not kept, and a search left without faces says why. */
function keepLargeEnough(faces, tooSmall, rejected, minFacePx) {
  const kept = faces.filter((f) => faceSize(f.landmarks) >= minFacePx);
  const small = tooSmall.concat(faces.filter((f) => faceSize(f.landmarks) < minFacePx)
    .map((f) => landmarkBox(f.landmarks)));
  const reason = kept.length ? null : (small.length ? TOO_SMALL : (rejected ? REJECTED : NONE_DETECTED));
  return { kept, tooSmall: small, reason };
}

/** detect.distinct_faces: landmark sets less any overlapping an earlier one (the landmarker
 * can return one masked face twice). */
export function distinctFaces(faces, sameFaceIou) {
  const kept = [];
  for (const f of faces) {
    const box = landmarkBox(f);
    if (!kept.some((k) => boxIou(box, landmarkBox(k)) > sameFaceIou)) kept.push(f);
  }
  return kept;
}

/** mesh.roi_from_landmarks: the region MediaPipe tracks a face with. */
export function roiFromLandmarks(pts, s, scale = s.roi_scale) {
  return roiFromPoints(landmarkBox(pts), pts[s.right_eye_outer], pts[s.left_eye_outer], scale);
}

/** The landmark model of face_landmarker.task on regions we choose (mesh.FaceMesh). */
export class FaceMesh {
  /**
   * @param {(input: Float32Array) => Promise<{landmarks: Float32Array, presence: number}>} run
   *   one [1, S, S, 3] pass of the model (presence: the raw logit).
   * @param {object} s config.faces.settings.mesh.
   */
  constructor(run, s) {
    this.run = run;
    this.s = s;
  }

  /** The 478 landmarks (photo pixels) and presence score of the face in `roi`. */
  async landmark(rgb, w, h, roi) {
    const size = this.s.input_size, m = roiMatrix(roi, size);
    const crop = warpToCrop(rgb, w, h, centreConvention(m), size, "constant");
    const input = Float32Array.from(crop, (v) => v / 255);
    const out = await this.run(input);
    const pts = [];
    for (let i = 0; i < this.s.num_landmarks; i++) pts.push([out.landmarks[i * 3], out.landmarks[i * 3 + 1]]);
    const logit = Math.min(Math.max(out.presence, -100), 100);
    return { landmarks: transformPoints(pts, invertAffine(m)), presence: 1 / (1 + Math.exp(-logit)), roi };
  }
}

// ---------------------------------------------------------------- cascade.py

function norm(a, b) {
  return Math.hypot(a[0] - b[0], a[1] - b[1]);
}

/** cascade.covered: the detection's box centre lies in one of `boxes`. */
export function covered(det, boxes) {
  const cx = (det.box[0] + det.box[2]) / 2, cy = (det.box[1] + det.box[3]) / 2;
  return boxes.some((b) => b[0] <= cx && cx <= b[2] && b[1] <= cy && cy <= b[3]);
}

/**
 * cascade.fits_face: null when an (upright) detection and landmarks agree on a face, else why not.
 */
export function fitsFace(det, lm, maxEyeOffset, S) {
  const c = S.cascade, L = S.landmarks, d = S.detector;
  if (!det || det.score < c.confirm_score) return "no detection on the upright face";
  const mid = ([i, j]) => [(lm[i][0] + lm[j][0]) / 2, (lm[i][1] + lm[j][1]) / 2];
  const right = mid(L.left_eye_corners), left = mid(L.right_eye_corners);  // image-left is the subject's right
  const kpR = det.keypoints[d.right_eye], kpL = det.keypoints[d.left_eye];
  const eyeDist = norm(kpL, kpR);
  if (eyeDist <= 0) return "detector eyes coincide";
  const offset = Math.max(norm(right, kpR), norm(left, kpL)) / eyeDist;
  if (offset > maxEyeOffset) return `landmark eyes ${offset.toFixed(2)} eye distances from the detector's`;
  const ratio = norm(left, right) / Math.max(detectionSize(det), 1e-6);
  if (!(c.eye_to_box[0] <= ratio && ratio <= c.eye_to_box[1])) {
    return `eye distance / box ${ratio.toFixed(2)} outside (${c.eye_to_box.join(", ")})`;
  }
  return null;
}

/** The image flipped left-right (numpy's image[:, ::-1]). */
export function flipRgb(rgb, w, h) {
  const out = new Uint8Array(rgb.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const s = (y * w + x) * 3, d = (y * w + (w - 1 - x)) * 3;
      out[d] = rgb[s]; out[d + 1] = rgb[s + 1]; out[d + 2] = rgb[s + 2];
    }
  }
  return out;
}

/** cascade.mirror_detection: the same face's detection in the photo flipped left-right. */
export function mirrorDetection(det, width, mirrorKeypoints) {
  return {
    box: [width - det.box[2], det.box[1], width - det.box[0], det.box[3]],
    keypoints: mirrorKeypoints.map((k) => [width - det.keypoints[k][0], det.keypoints[k][1]]),
    score: det.score,
  };
}

/** landmarks.unmirror: landmarks found on the flipped photo, in the photo (`order`: mirror_order). */
export function unmirror(lm, width, order) {
  return order.map((i) => [Math.fround(width - lm[i][0]), lm[i][1]]);
}

/** detect.face_size: the landmark box's longer side. */
export function faceSize(lm) {
  const b = landmarkBox(lm);
  return Math.max(b[2] - b[0], b[3] - b[1]);
}

/** cascade.confirm_score: the best score of the detections centred in the face (0 if none). */
export function confirmScore(lm, detections) {
  const box = landmarkBox(lm);
  return Math.max(0, ...detections.filter((d) => covered(d, [box])).map((d) => d.score));
}

/** The two-stage finder of detect.FaceAnalyzer (image mode) on top of the landmarker's faces. */
export class FaceFinder {
  /**
   * @param {FullRangeDetector} detector
   * @param {FaceMesh} mesh
   * @param {object} settings config.faces.settings.
   */
  constructor(detector, mesh, settings) {
    this.detector = detector;
    this.mesh = mesh;
    this.S = settings;
    this.resetVideo();
  }

  /** Starts a new stream: no faces tracked, the full-range pass due on its first frame. */
  resetVideo() {
    this.tracked = [];
    this.sinceFullRange = this.S.video.full_range_every;
  }

  /** cascade.upright_detection: the detector on the face turned upright by its landmarks. */
  async uprightDetection(rgb, w, h, lm) {
    const size = this.S.detector.input_size;
    const m = roiMatrix(roiFromLandmarks(lm, this.S.mesh, this.S.cascade.upright_scale), size);
    const crop = warpToCrop(rgb, w, h, centreConvention(m), size, "constant");
    const pts = transformPoints(lm, m);
    const nose = pts[this.S.landmarks.nose_tip];
    const hits = (await this.detector.detect(crop, size, size)).filter(
      (d) => d.box[0] <= nose[0] && nose[0] <= d.box[2] && d.box[1] <= nose[1] && nose[1] <= d.box[3]);
    return { det: hits.length ? hits[0] : null, pts };
  }

  /**
   * cascade.tight_crop_detections: faces that fill the photo (tight crops), which the
   * whole-photo pass misses. The photo is shrunk into a black canvas the detector's input
   * size, its longer side 1 / tight_crop_scale of it (a face filling the photo is then a
   * third of the input), the detector's whole pass runs on it, and the detections at
   * least tight_face_share of the photo's shorter side are kept, best first, in photo pixels.
   */
  async tightCropDetections(rgb, w, h) {
    const c = this.S.cascade;
    const dets = await this.detector.wholePass(rgb, w, h, c.tight_crop_scale);
    return weightedNms(dets, this.S.detector.nms_iou)
      .filter((d) => detectionSize(d) >= c.tight_face_share * Math.min(h, w));
  }

  /** cascade.verify: null when the landmarks and an upright re-detection agree, else why not. */
  async verify(rgb, w, h, lm, maxEyeOffset = this.S.cascade.max_eye_offset) {
    const { det, pts } = await this.uprightDetection(rgb, w, h, lm);
    return fitsFace(det, pts, maxEyeOffset, this.S);
  }

  /** cascade.keep_landmarker_face: whether the full-range detector confirms a landmarker face. */
  async keepLandmarkerFace(rgb, w, h, lm, detections) {
    const c = this.S.cascade;
    if (confirmScore(lm, detections) >= c.strong_confirm_score) return true;
    return (await this.verify(rgb, w, h, lm, c.landmarker_max_eye_offset)) === null;
  }

  /**
   * cascade.landmark_detection: landmarks a detection on an upright crop and checks them.
   *
   * @returns {Promise<{landmarks: number[][], why: string|null, present: boolean}>} the
   *   landmarks, null when they pass `verify` (else why not), and whether either pass
   *   saw a face.
   */
  async landmarkDetection(rgb, w, h, det, refinedOnly = false) {
    const c = this.S.cascade, d = this.S.detector;
    const roi = roiFromPoints(det.box, det.keypoints[d.right_eye], det.keypoints[d.left_eye],
      this.S.mesh.roi_scale);
    // The second pass (on the first one's landmarks) is the more accurate while it still sees a face.
    const first = await this.mesh.landmark(rgb, w, h, roi);
    const second = await this.mesh.landmark(rgb, w, h, roiFromLandmarks(first.landmarks, this.S.mesh));
    let why = "face presence too low", present = false;
    for (const r of refinedOnly ? [second] : [second, first]) {
      if (r.presence >= c.min_presence) {
        present = true;
        why = await this.verify(rgb, w, h, r.landmarks);
        if (why === null) return { landmarks: r.landmarks, why: null, present: true };
      } else {
        why = `face presence ${r.presence.toFixed(2)} < ${c.min_presence}`;
      }
    }
    return { landmarks: second.landmarks, why, present };
  }

  /** cascade.search: landmarks faces the detector found and `found` does not cover. */
  async search(rgb, w, h, detections, found, maxNew, minFacePx) {
    const c = this.S.cascade;
    const out = { landmarks: [], detected: 0, rejected: 0, tooSmall: [], reasons: [] };
    const boxes = found.map(landmarkBox);
    let checks = 0, flipped = null;
    for (const det of detections) {
      if (out.landmarks.length >= maxNew || checks >= c.max_checks) break;
      if (covered(det, boxes)) continue;
      checks += 1;
      let { landmarks, why, present } = await this.landmarkDetection(rgb, w, h, det);
      if (!present) {
        // The landmark model's face presence is not left-right symmetric (on heads
        // turned one way above a mask it is near 0, on their mirror image often near
        // 1): the mirrored photo goes through the same checks, its second pass only.
        flipped = flipped || flipRgb(rgb, w, h);
        const m = await this.landmarkDetection(flipped, w, h, mirrorDetection(det, w, c.mirror_keypoints), true);
        if (m.why === null) {
          landmarks = unmirror(m.landmarks, w, this.S.landmarks.mirror_order);
          why = null;
        }
      }
      const box = landmarkBox(landmarks);
      if (why !== null) {
        out.rejected += 1;
        out.reasons.push(why);
      } else if (boxes.some((b) => boxIou(box, b) > c.same_face_iou)) {
        continue;  // a second detection of a face already found (e.g. by a tile)
      } else if (detectionSize(det) < minFacePx) {
        out.detected += 1;
        out.tooSmall.push(det.box);
        boxes.push(box);
      } else {
        out.detected += 1;
        out.landmarks.push(landmarks);
        boxes.push(box);
      }
    }
    return out;
  }

  /**
   * detect.FaceAnalyzer.find's second stage for a photo.
   *
   * @param {number[][][]} first the landmarker's faces (pixel landmarks).
   * @returns {Promise<{faces: {landmarks: number[][], source: string}[], tooSmall: number[][],
   *   rejected: number, detected: number, reasons: string[], reason: string|null}>}
   */
  async find(rgb, w, h, first, numFaces) {
    const minFacePx = this.S.cascade.min_face_px;
    // FaceAnalyzer._confirmed: the landmarker's faces that the detector confirms. The
    // whole-photo pass and the upright check settle almost every face; the tiles
    // (most of the detector's cost) run here only for a face that neither confirms.
    const whole = await this.detector.wholePass(rgb, w, h);
    const coarse = weightedNms(whole, this.S.detector.nms_iou);
    let unsure = [];
    for (let i = 0; i < first.length; i++) {
      if (!(await this.keepLandmarkerFace(rgb, w, h, first[i], coarse))) unsure.push(i);
    }
    let detections = null;
    if (unsure.length) {
      detections = await this.detector.detect(rgb, w, h, { whole });
      unsure = unsure.filter((i) => confirmScore(first[i], detections) < this.S.cascade.strong_confirm_score);
    }
    let faces = first.filter((_, i) => !unsure.includes(i)).map((lm) => ({ landmarks: lm, source: LANDMARKER }));
    if (detections === null && faces.length < numFaces) {
      detections = await this.detector.detect(rgb, w, h,
        { minFacePx: this.searchMinFacePx(faces.map((f) => f.landmarks)), whole });
    }
    let rejected = first.length - faces.length, detected = first.length, tooSmall = [], reasons = [];
    if (detections !== null && faces.length < numFaces) {
      const found = await this.search(rgb, w, h, detections, first, numFaces - faces.length, minFacePx);
      rejected += found.rejected;
      detected += found.detected;
      tooSmall = found.tooSmall;
      reasons = found.reasons;
      faces = faces.concat(found.landmarks.map((lm) => ({ landmarks: lm, source: FULL_RANGE })));
    }
    if (detections !== null && !faces.length) {
      // A face that fills the photo (a tight crop) is beyond the whole-photo pass; the
      // landmarker's faces turned away above are no reason to skip it. What this search
      // turns away is not counted as rejected: a photo without a tight face keeps the
      // reason its own search gave (as detect.FaceAnalyzer._second_stage).
      const tight = await this.search(rgb, w, h, await this.tightCropDetections(rgb, w, h), [],
        numFaces, minFacePx);
      detected += tight.detected;
      tooSmall = tooSmall.concat(tight.tooSmall);
      faces = faces.concat(tight.landmarks.map((lm) => ({ landmarks: lm, source: FULL_RANGE })));
    }
    const end = keepLargeEnough(faces, tooSmall, rejected, minFacePx);
    return { faces: end.kept, tooSmall: end.tooSmall, rejected, detected, reasons, reason: end.reason,
      detections: detections === null ? coarse.length : detections.length };
  }

  /**
   * detect.FaceAnalyzer.find_video for one camera frame: faces the full-range stage
   * added are followed with the landmark model on the region of their last
   * landmarks; the detector itself (one whole-frame pass, no tiles) runs at most
   * every `full_range_every` frames. The landmarker's faces are not re-checked
   * (it tracks them; they must not blink in and out).
   *
   * @param {number[][][]} first the landmarker's faces in this frame.
   * @returns the same object as `find`.
   */
  async findVideo(rgb, w, h, first, numFaces) {
    const S = this.S;
    const faces = first.map((lm) => ({ landmarks: lm, source: LANDMARKER }));
    const boxes = first.map(landmarkBox);
    for (const prev of this.tracked) {
      if (faces.length >= numFaces) break;
      const r = await this.mesh.landmark(rgb, w, h, roiFromLandmarks(prev, S.mesh));
      const box = landmarkBox(r.landmarks);
      if (r.presence < S.video.min_track_presence
        || boxes.some((b) => boxIou(box, b) > S.cascade.same_face_iou)) continue;
      faces.push({ landmarks: r.landmarks, source: FULL_RANGE });
      boxes.push(box);
    }
    this.sinceFullRange += 1;
    const due = this.sinceFullRange >= S.video.full_range_every;
    if (due) this.sinceFullRange = 0;
    const minFacePx = S.cascade.min_face_px;
    let all = faces, tooSmall = [], rejected = 0, detected = faces.length, reasons = [], count = 0;
    if (due) {
      const detections = await this.detector.detect(rgb, w, h, { minFacePx: 0 });
      count = detections.length;
      if (faces.length < numFaces) {
        const found = await this.search(rgb, w, h, detections, faces.map((f) => f.landmarks),
          numFaces - faces.length, minFacePx);
        rejected = found.rejected;
        detected += found.detected;
        tooSmall = found.tooSmall;
        reasons = found.reasons;
        all = faces.concat(found.landmarks.map((lm) => ({ landmarks: lm, source: FULL_RANGE })));
      }
    }
    const end = keepLargeEnough(all, tooSmall, rejected, minFacePx);
    this.tracked = end.kept.filter((f) => f.source === FULL_RANGE).map((f) => f.landmarks);
    return { faces: end.kept, tooSmall: end.tooSmall, rejected, detected, reasons, reason: end.reason,
      detections: count, fullRange: due };
  }

  /** detect.search_min_face_px: beside faces found, search faces down to 1/span of the smallest. */
  searchMinFacePx(found) {
    const min = this.S.cascade.min_face_px;
    if (!found.length) return min;
    return Math.max(min, Math.min(...found.map(faceSize)) / this.S.face_scale_span);
  }
}
