// OpenCV-compatible image operations for the page, on plain typed arrays.
//
// deocc's Python path (deocc_jax/faces/align.py, deocc_jax/restoration/blend.py)
// uses cv2.warpAffine, cv2.resize(INTER_AREA), cv2.dilate and cv2.GaussianBlur.
// These are ports of what OpenCV 5 computes for exactly the arguments deocc
// passes, down to its float32 arithmetic and round-half-to-even: the page's
// crops match the Python path's but for 1 grey level on a few values in 10^5,
// its pasted faces on a few in 10^4 (OpenCV's constant-border warp takes
// another code path, whose rounding is not reproduced here).
//
// Images are row-major, interleaved: index = (y * width + x) * channels + c.

/** Rounds half to even, like cvRound / numpy.round / Python's round(). */
export function roundHalfEven(v) {
  const r = Math.round(v);
  // Math.round rounds .5 up; ties go to the even neighbour instead.
  return (r - v === 0.5 && (r & 1) !== 0) ? r - 1 : r;
}

function clampU8(v) {
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

/** cv2.invertAffineTransform of a 2x3 matrix given as [a, b, c, d, e, f]. */
export function invertAffine(m) {
  const [a, b, c, d, e, f] = m;
  let det = a * e - b * d;
  det = det !== 0 ? 1 / det : 0;
  const a11 = e * det, a22 = a * det, a12 = -b * det, a21 = -d * det;
  return [a11, a12, -a11 * c - a12 * f, a21, a22, -a21 * c - a22 * f];
}

function reflect101(i, n) {
  if (n === 1) return 0;
  // BORDER_REFLECT_101: ...2 1 | 0 1 2 ... n-1 | n-2 ...
  while (i < 0 || i >= n) {
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
  }
  return i;
}

/**
 * A bilinear sampler computing what cv2.warpAffine(INTER_LINEAR) writes at one
 * output pixel, as OpenCV 5 does it: the matrix in float32, source coordinates
 * and the two-step interpolation as float32 fused multiply-adds, rounded half
 * to even. (Math.fround(a * b + c) of float32 operands is a float32 FMA: the
 * double product is exact.)
 *
 * @param {Uint8Array|Float32Array} src source image, `channels` interleaved.
 * @param {number} sw source width.
 * @param {number} sh source height.
 * @param {number} channels channels per pixel.
 * @param {number[]} m 2x3 matrix [a,b,c,d,e,f].
 * @param {object} opts {inverseMap: m maps output to source pixels
 *   (cv2.WARP_INVERSE_MAP) instead of source to output; border: "reflect101"
 *   (cv2.BORDER_REFLECT_101) or "constant" (cv2.BORDER_CONSTANT, value 0)}.
 * @returns {(x: number, y: number, out: Uint8Array|Float32Array, o: number) => void}
 *   writes output pixel (x, y) at out[o..o+channels); uint8 sources give
 *   rounded values.
 */
export function affineSampler(src, sw, sh, channels, m, opts = {}) {
  const f = Math.fround;
  const [a, b, c, d, e, g] = (opts.inverseMap ? m : invertAffine(m)).map(f);
  const constant = opts.border === "constant";
  const isU8 = src instanceof Uint8Array || src instanceof Uint8ClampedArray;
  const fetch = (xx, yy, k) => {
    if (xx < 0 || xx >= sw || yy < 0 || yy >= sh) {
      if (constant) return 0;
      xx = reflect101(xx, sw);
      yy = reflect101(yy, sh);
    }
    return src[(yy * sw + xx) * channels + k];
  };
  return (x, y, out, o) => {
    const sx = f(a * x + f(y * b + c)), sy = f(d * x + f(y * e + g));
    const x0 = Math.floor(sx), y0 = Math.floor(sy);
    const fx = f(sx - x0), fy = f(sy - y0);
    if (constant && (x0 + 1 < 0 || y0 + 1 < 0 || x0 >= sw || y0 >= sh)) {
      for (let k = 0; k < channels; k++) out[o + k] = 0;  // all four neighbours are border
      return;
    }
    const inside = x0 >= 0 && y0 >= 0 && x0 + 1 < sw && y0 + 1 < sh;
    const i00 = (y0 * sw + x0) * channels, i10 = i00 + sw * channels;
    for (let k = 0; k < channels; k++) {
      let p00, p01, p10, p11;
      if (inside) {  // the common case, without border handling
        p00 = src[i00 + k]; p01 = src[i00 + channels + k];
        p10 = src[i10 + k]; p11 = src[i10 + channels + k];
      } else {
        p00 = fetch(x0, y0, k); p01 = fetch(x0 + 1, y0, k);
        p10 = fetch(x0, y0 + 1, k); p11 = fetch(x0 + 1, y0 + 1, k);
      }
      const top = f(fx * f(p01 - p00) + p00), bottom = f(fx * f(p11 - p10) + p10);
      const v = f(fy * f(bottom - top) + top);
      out[o + k] = isU8 ? clampU8(roundHalfEven(v)) : v;
    }
  };
}

/**
 * cv2.warpAffine with INTER_LINEAR (see affineSampler for the arguments).
 *
 * @returns output (dw x dh) of the source's array type.
 */
export function warpAffine(src, sw, sh, channels, m, dw, dh, opts = {}) {
  const isU8 = src instanceof Uint8Array || src instanceof Uint8ClampedArray;
  const out = isU8 ? new Uint8Array(dw * dh * channels) : new Float32Array(dw * dh * channels);
  const sample = affineSampler(src, sw, sh, channels, m, opts);
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) sample(x, y, out, (y * dw + x) * channels);
  }
  return out;
}

// OpenCV's computeResizeAreaTab for a non-integer shrink along one axis, as
// flat arrays: output index i takes source indices idx[start[i]..start[i+1])
// with float32 weights w.
function areaTable(ssize, dsize, scale) {
  const idx = [], w = [], start = [0];
  const f = Math.fround;
  const clip = (v) => Math.min(Math.max(v, 0), ssize - 1);
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    const sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    if (sx1 - fsx1 > 1e-3) { idx.push(clip(sx1 - 1)); w.push(f((sx1 - fsx1) / cellWidth)); }
    for (let sx = sx1; sx < sx2; sx++) { idx.push(clip(sx)); w.push(f(1 / cellWidth)); }
    if (fsx2 - sx2 > 1e-3) {
      idx.push(clip(sx2));
      w.push(f(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth));
    }
    start.push(idx.length);
  }
  return { idx: Int32Array.from(idx), w: Float32Array.from(w), start: Int32Array.from(start) };
}

/**
 * cv2.resize(src, (dw, dh), interpolation=cv2.INTER_AREA) for a uint8 shrink.
 *
 * Every output pixel is the area-weighted mean of the source pixels its cell
 * covers: each source row is summed horizontally into a float32 buffer, and
 * the rows are then summed vertically, in OpenCV's order and precision.
 */
export function resizeArea(src, sw, sh, channels, dw, dh) {
  const scaleX = sw / dw, scaleY = sh / dh;
  const out = new Uint8Array(dw * dh * channels);
  const ix = Math.round(scaleX), iy = Math.round(scaleY);
  if (Math.abs(scaleX - ix) < 2.220446049250313e-16 && Math.abs(scaleY - iy) < 2.220446049250313e-16) {
    // Integer factors: OpenCV's resizeAreaFast averages whole blocks and
    // rounds the integer sum: (sum + area / 2) / area.
    const area = ix * iy;
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let k = 0; k < channels; k++) {
          let sum = 0;
          for (let j = 0; j < iy; j++) {
            const row = (y * iy + j) * sw;
            for (let i = 0; i < ix; i++) sum += src[(row + x * ix + i) * channels + k];
          }
          out[(y * dw + x) * channels + k] = Math.floor((sum + (area >> 1)) / area);
        }
      }
    }
    return out;
  }
  const xt = areaTable(sw, dw, scaleX), yt = areaTable(sh, dh, scaleY);
  const f = Math.fround;
  const n = dw * channels;
  // Horizontal sums of the last source row used (consecutive output rows share one).
  let cachedRow = -1;
  const row = new Float32Array(n);
  const horizontal = (sy) => {
    if (sy === cachedRow) return;
    row.fill(0);
    const srow = sy * sw * channels;
    for (let x = 0; x < dw; x++) {
      const t = x * channels;
      for (let q = xt.start[x]; q < xt.start[x + 1]; q++) {
        const s = srow + xt.idx[q] * channels, w = xt.w[q];
        for (let k = 0; k < channels; k++) row[t + k] = f(row[t + k] + f(src[s + k] * w));
      }
    }
    cachedRow = sy;
  };
  const acc = new Float32Array(n);
  for (let y = 0; y < dh; y++) {
    for (let q = yt.start[y]; q < yt.start[y + 1]; q++) {
      horizontal(yt.idx[q]);
      const beta = yt.w[q];
      if (q === yt.start[y]) {
        for (let i = 0; i < n; i++) acc[i] = f(beta * row[i]);
      } else {
        for (let i = 0; i < n; i++) acc[i] = f(acc[i] + f(beta * row[i]));
      }
    }
    const orow = y * n;
    for (let i = 0; i < n; i++) out[orow + i] = clampU8(roundHalfEven(acc[i]));
  }
  return out;
}

/** cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)) as rows of [j1, j2) spans. */
export function ellipseSpans(size) {
  const r = Math.floor(size / 2), c = Math.floor(size / 2);
  const invR2 = r ? 1 / (r * r) : 0;
  const spans = [];
  for (let i = 0; i < size; i++) {
    const dy = i - r;
    let j1 = 0, j2 = 0;
    if (Math.abs(dy) <= r) {
      const dx = roundHalfEven(c * Math.sqrt((r * r - dy * dy) * invR2));
      j1 = Math.max(c - dx, 0);
      j2 = Math.min(c + dx + 1, size);
    }
    spans.push([j1, j2]);
  }
  return spans;
}

/**
 * cv2.dilate of a single-channel 0/1 uint8 image with an ellipse kernel of
 * side `size` (odd); pixels outside the image do not count (OpenCV's
 * default border for dilation).
 */
export function dilateEllipse(src, w, h, size) {
  const spans = ellipseSpans(size);
  const anchor = Math.floor(size / 2);
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let v = 0;
      for (let i = 0; i < size && !v; i++) {
        const yy = y + i - anchor;
        if (yy < 0 || yy >= h) continue;
        const [j1, j2] = spans[i];
        for (let j = j1; j < j2; j++) {
          const xx = x + j - anchor;
          if (xx >= 0 && xx < w && src[yy * w + xx] > v) v = src[yy * w + xx];
        }
      }
      out[y * w + x] = v;
    }
  }
  return out;
}

/** cv2.getGaussianKernel(ksize, sigma) for sigma > 0, float32 as GaussianBlur uses it. */
export function gaussianKernel(ksize, sigma) {
  const k = new Float64Array(ksize);
  const scale2X = -0.5 / (sigma * sigma);
  let sum = 0;
  for (let i = 0; i < ksize; i++) {
    const x = i - (ksize - 1) * 0.5;
    k[i] = Math.exp(scale2X * x * x);
    sum += k[i];
  }
  return Float32Array.from(k, (v) => v / sum);
}

/**
 * cv2.GaussianBlur(src, (0, 0), sigma) of a float32 image with `channels`
 * interleaved channels: kernel side cvRound(8 sigma + 1) | 1 (OpenCV's rule
 * for float images), BORDER_REFLECT_101, rows then columns. Each pass sums in
 * double and stores float32 (OpenCV sums in float32; the difference is far
 * below what the uint8 results and blend weights resolve).
 */
export function gaussianBlur(src, w, h, sigma, channels = 1) {
  const ksize = roundHalfEven(sigma * 4 * 2 + 1) | 1;
  const kern = gaussianKernel(ksize, sigma);
  const half = (ksize - 1) >> 1;
  const cn = channels;
  // Reflected indices of every tap, once per axis.
  const taps = (n) => {
    const t = new Int32Array(n * ksize);
    for (let i = 0; i < n; i++) for (let k = 0; k < ksize; k++) t[i * ksize + k] = reflect101(i + k - half, n);
    return t;
  };
  const tx = taps(w), ty = taps(h);
  const tmp = new Float32Array(w * h * cn);
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < cn; c++) {
        let s = 0;
        for (let k = 0; k < ksize; k++) s += kern[k] * src[(row + tx[x * ksize + k]) * cn + c];
        tmp[(row + x) * cn + c] = s;
      }
    }
  }
  const out = new Float32Array(w * h * cn);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < cn; c++) {
        let s = 0;
        for (let k = 0; k < ksize; k++) s += kern[k] * tmp[(ty[y * ksize + k] * w + x) * cn + c];
        out[(y * w + x) * cn + c] = s;
      }
    }
  }
  return out;
}

/**
 * align._median_colour: the per-channel median of a uint8 image, sampled
 * every `step` rows and columns (step = max(1, int(sqrt(h w / 65536))), so at
 * most ~65k pixels), as numpy.median gives it: the middle value, or the mean
 * of the two middle ones for an even count.
 *
 * @returns {number[]} one median per channel.
 */
export function medianColour(src, w, h, channels) {
  const step = Math.max(1, Math.trunc(Math.sqrt(h * w / 65536)));
  const hist = Array.from({ length: channels }, () => new Float64Array(256));
  let n = 0;
  for (let y = 0; y < h; y += step) {
    for (let x = 0; x < w; x += step) {
      const i = (y * w + x) * channels;
      for (let c = 0; c < channels; c++) hist[c][src[i + c]] += 1;
      n += 1;
    }
  }
  // The value at a rank (0-based) of the sorted samples.
  const atRank = (hc, rank) => {
    let seen = 0;
    for (let v = 0; v < 256; v++) {
      seen += hc[v];
      if (seen > rank) return v;
    }
    return 255;
  };
  return hist.map((hc) => (n % 2 ? atRank(hc, (n - 1) / 2)
    : (atRank(hc, n / 2 - 1) + atRank(hc, n / 2)) / 2));
}
