r"""Restoration sheets: what a model does to real photos, one row per face, for a person to look at.

The library of `python -m benchmarks.sheet` (benchmarks/sheet.py, its flags).

Every photo goes through `infer`'s own photo path: decoded by `infer_lib.read_photo_frames`
(same checks, same pixel limit), faces found by `faces.FaceAnalyzer.find` with `infer`'s
defaults, restored by `restoration.frames.restore_frame` (align, model, blend back). Each face
is one row of five tiles:

  aligned input | model output | predicted mask | photo | pasted back

The first three are the model's own crops at its resolution, enlarged by a whole factor with
nearest-neighbour so every model pixel stays visible; the last two are the same square box of
the photo before and after blending (the axis-aligned box around the crop's footprint), so
seams and the feathered edge show at the photo's own scale. Above each row a caption names the
photo and the face. A photo without a face, or one that cannot be read, still gets a row that
says why: a sheet never drops a photo silently.

Nothing here is random: the same photos, model and `--seed` (which only picks the photos when
there are more than `--max_photos`) give the same sheet, byte for byte.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Sequence

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.artifacts.predictors import Predictor
from deocc_jax.faces import FaceAnalyzer, align
from deocc_jax.faces.cascade import DEFAULT_MIN_FACE_PX
from deocc_jax.io import assets, atomic, images
from deocc_jax.restoration import frames, infer_lib

COLUMNS = ("aligned input", "model output", "predicted mask", "photo", "pasted back")
PHOTO_COLUMN = COLUMNS.index("photo")
# Tiles are the model's resolution enlarged by a whole factor to at least this many pixels.
MIN_TILE = 256
HEADER_PX = 28
CAPTION_PX = 24
GAP_PX = 4
BACKGROUND = 255   # white page
EMPTY_TILE = 200   # light grey where a row has nothing to show
TEXT = (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5
# `infer`'s defaults (deocc_jax/infer.py), so the sheet shows what `infer` would do.
MAX_FACES = 8
MIN_CONFIDENCE = 0.3


@dataclasses.dataclass
class Row:
    """One row of a sheet.

    Attributes:
      caption: the line above the tiles (file name, which face, or why there is none).
      tiles: uint8 [tile, tile, 3] per column, or None where the row has nothing to show.
    """
    caption: str
    tiles: list[np.ndarray | None]


def tile_size(resolution: int) -> int:
    """The side of every tile: `resolution` times the smallest whole factor reaching MIN_TILE."""
    return resolution * max(1, -(-MIN_TILE // resolution))


def pick_photos(input_spec: str, max_photos: int, seed: int) -> list[str]:
    """The photos of `input_spec` (a file, folder or glob), at most `max_photos`, sorted.

    When there are more, `seed` picks which, the same ones every time.

    Raises:
      errors.InputNotFoundError: no images at `input_spec`.
      errors.InvalidInputError: `max_photos` < 1.
    """
    if max_photos < 1:
        raise errors.InvalidInputError(f"--max_photos {max_photos}: must be at least 1")
    paths = infer_lib.collect_images(input_spec)
    if len(paths) <= max_photos:
        return paths
    keep = np.random.default_rng(seed).choice(len(paths), max_photos, replace=False)
    return [paths[i] for i in sorted(keep)]


def enlarge(crop: np.ndarray, tile: int) -> np.ndarray:
    """A model-resolution crop (RGB or [R, R] grey) as an RGB tile, each pixel a whole block."""
    factor = tile // crop.shape[0]
    big = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
    return big if big.ndim == 3 else np.repeat(big[..., None], 3, axis=-1)


def mask_tile(mask: np.ndarray, tile: int) -> np.ndarray:
    """The predicted occlusion probability [R, R] in [0, 1] as a grey tile (white = occluded)."""
    return enlarge(np.clip(np.rint(np.asarray(mask, np.float32) * 255), 0, 255).astype(np.uint8),
                   tile)


def face_box(M: np.ndarray, resolution: int) -> tuple[float, float, float]:
    """(x0, y0, side) in photo pixels: the square around the aligned crop's footprint in the photo."""
    inv = align.inverse_matrix(M)
    corners = np.array([[0, 0], [resolution, 0], [resolution, resolution], [0, resolution]],
                       np.float64) - 0.5
    pts = corners @ inv[:, :2].T + inv[:, 2]
    lo, hi = pts.min(0), pts.max(0)
    side = float((hi - lo).max())
    centre = (lo + hi) / 2
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def region_tile(image: np.ndarray, box: tuple[float, float, float], tile: int) -> np.ndarray:
    """The photo's square `box` as a tile; beyond the photo's edge the tile is EMPTY_TILE grey.

    Shrinking averages pixels (INTER_AREA), so a large photo's face is not aliased.
    """
    x0, y0, side = box
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    n = max(1, int(np.ceil(side)))
    canvas = np.full((n, n, 3), EMPTY_TILE, np.uint8)
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix0 + n, w), min(iy0 + n, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0] = image[sy0:sy1, sx0:sx1]
    shrink = n > tile
    return cv2.resize(canvas, (tile, tile),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def thumbnail(image: np.ndarray, tile: int) -> np.ndarray:
    """The whole photo fitted into a tile (kept in proportion, centred on EMPTY_TILE grey)."""
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.full((tile, tile, 3), EMPTY_TILE, np.uint8)
    y, x = (tile - nh) // 2, (tile - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def face_rows(name: str, image: np.ndarray, restored: frames.Restored, faces_too_small: int,
              tile: int) -> list[Row]:
    """One row per restored face of a photo (`restore_frame`'s result)."""
    n = len(restored.faces)
    small = f"; {faces_too_small} more below --min_face_px left as they are" if faces_too_small else ""
    rows = []
    for i, M in enumerate(restored.faces.matrices):
        r = restored.faces.crops.shape[1]
        box = face_box(M, r)
        rows.append(Row(
            caption=f"{name}: face {i + 1} of {n}{small}",
            tiles=[enlarge(restored.faces.crops[i], tile), enlarge(restored.out.restored[i], tile),
                   mask_tile(restored.out.masks[i], tile), region_tile(image, box, tile),
                   region_tile(restored.image, box, tile)]))
    return rows


def no_face_row(name: str, reason: str, image: np.ndarray | None, tile: int) -> Row:
    """The row of a photo with nothing restored: why, and the photo itself when it was read."""
    tiles: list[np.ndarray | None] = [None] * len(COLUMNS)
    if image is not None:
        tiles[PHOTO_COLUMN] = thumbnail(image, tile)
    return Row(caption=f"{name}: {reason}", tiles=tiles)


def tile_origin(row: int, column: int, tile: int) -> tuple[int, int]:
    """(y, x) of a row's tile in the sheet; rows count from 0 below the header."""
    y = HEADER_PX + row * (CAPTION_PX + tile + GAP_PX) + CAPTION_PX
    return y, column * (tile + GAP_PX)


def sheet_shape(num_rows: int, tile: int) -> tuple[int, int, int]:
    """(height, width, 3) of a sheet of `num_rows` rows."""
    return (HEADER_PX + num_rows * (CAPTION_PX + tile + GAP_PX),
            len(COLUMNS) * tile + (len(COLUMNS) - 1) * GAP_PX, 3)


def _fit(text: str, width: int) -> str:
    """`text`, cut with "..." so that it fits `width` pixels in the sheet's font."""
    def px(s):
        return cv2.getTextSize(s, FONT, FONT_SCALE, 1)[0][0]
    if px(text) <= width:
        return text
    while text and px(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _put(sheet: np.ndarray, text: str, x: int, y_bottom: int, width: int) -> None:
    cv2.putText(sheet, _fit(text, width), (x + 2, y_bottom - 7), FONT, FONT_SCALE, TEXT, 1,
                cv2.LINE_AA)


def render(rows: Sequence[Row], resolution: int) -> np.ndarray:
    """The sheet: a header naming the columns, then each row's caption above its tiles.

    Args:
      rows: the rows, top to bottom.
      resolution: the model's resolution (named in the header; sets the tile size).

    Returns:
      uint8 [H, W, 3] RGB, `sheet_shape(len(rows), tile_size(resolution))`.
    """
    tile = tile_size(resolution)
    sheet = np.full(sheet_shape(len(rows), tile), BACKGROUND, np.uint8)
    for c, title in enumerate(COLUMNS):
        label = f"{title} ({resolution} px, x{tile // resolution})" if c < PHOTO_COLUMN else title
        _put(sheet, label, c * (tile + GAP_PX), HEADER_PX, tile)
    for r, row in enumerate(rows):
        y, _ = tile_origin(r, 0, tile)
        _put(sheet, row.caption, 0, y, sheet.shape[1])
        for c, t in enumerate(row.tiles):
            ty, tx = tile_origin(r, c, tile)
            sheet[ty:ty + tile, tx:tx + tile] = EMPTY_TILE if t is None else t
    return sheet


def build_rows(model: Predictor, paths: Sequence[str], *, max_faces: int = MAX_FACES,
               min_confidence: float = MIN_CONFIDENCE, min_face_px: float = DEFAULT_MIN_FACE_PX,
               max_pixels: int = infer_lib.DEFAULT_MAX_PIXELS, landmarker_model: str | None = None,
               log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Row]:
    """The rows of every photo, in order: one per face, or one saying why there is none.

    Args:
      model: a blind Predictor (guided models need masks a sheet does not have).
      paths: the photos.
      max_faces, min_confidence, min_face_px, max_pixels: as `infer`'s flags.
      landmarker_model: explicit face_landmarker.task path.
      log: where a progress line per photo goes (stderr by default).

    Raises:
      errors.InvalidInputError: `model` is a guided model.
    """
    frames.check_model(model, None)
    tile = tile_size(model.resolution)
    rows: list[Row] = []
    with FaceAnalyzer(mode="image", num_faces=max_faces, min_confidence=min_confidence,
                      model_path=landmarker_model, min_face_px=min_face_px) as analyzer:
        for k, path in enumerate(paths):
            name = os.path.basename(path)
            try:
                image, _, _ = infer_lib.read_photo_frames(path, max_pixels)
            except images.DecodeError as e:
                rows.append(no_face_row(name, f"cannot be read ({errors.one_line(e)})", None, tile))
                log(f"[sheet] {k + 1}/{len(paths)} {path}: cannot be read: {errors.one_line(e)}")
                continue
            search = analyzer.find(image)
            if not search.faces:
                rows.append(no_face_row(name, f"no face found ({search.reason})", image, tile))
                log(f"[sheet] {k + 1}/{len(paths)} {path}: no face found ({search.reason})")
                continue
            restored = frames.restore_frame(image, [f.landmarks for f in search.faces], model)
            rows += face_rows(name, image, restored, len(search.too_small), tile)
            log(f"[sheet] {k + 1}/{len(paths)} {path}: {len(search.faces)} face(s)")
    return rows


def make_sheet(model: Predictor, paths: Sequence[str], **kwargs) -> np.ndarray:
    """`render(build_rows(model, paths, **kwargs))`: the sheet of `paths` as a uint8 RGB array."""
    return render(build_rows(model, paths, **kwargs), model.resolution)


def encode_png(sheet: np.ndarray) -> bytes:
    """The sheet as PNG bytes at zlib's strongest level: half the size of OpenCV's default, so a
    sheet can be committed beside a model."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("OpenCV could not encode the sheet as PNG")
    return data.tobytes()


def run(model_path: str | None, input_spec: str, output: str, *, max_photos: int = 24,
        seed: int = 0, overwrite: bool = False, landmarker_model: str | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict:
    """Writes the sheet of `input_spec`'s photos to `output` (a PNG) with `infer`'s pipeline.

    The output is checked first (a PNG name, not an input, not existing unless
    `overwrite`, its folder writable), then the MediaPipe models are found, and
    only then is the model loaded and a photo read.

    Args:
      model_path: any model `infer --model` takes; None = the shipped model.
      input_spec: a photo, folder or glob.
      output: the sheet's path (.png).
      max_photos, seed: how many photos at most, and which when there are more.
      overwrite: replace an existing `output`.
      landmarker_model: explicit face_landmarker.task path.
      log: progress lines.

    Returns:
      {"output", "photos", "rows", "shape"}.

    Raises:
      errors.InvalidInputError: `output` is not a .png, or a bad `max_photos`.
      errors.OutputExistsError: `output` exists (without `overwrite`) or is an input.
      errors.InputNotFoundError: no photos at `input_spec`, or no such model.
    """
    if os.path.splitext(output)[1].lower() != ".png":
        raise errors.InvalidInputError(f"--output {output}: a sheet is written as .png (lossless)")
    paths = pick_photos(input_spec, max_photos, seed)
    atomic.plan_outputs([("the sheet", output)], paths, overwrite=overwrite)
    atomic.require_writable_dir(os.path.dirname(os.path.abspath(output)), create=False)
    landmarker_model = assets.resolve_model("face_landmarker.task", landmarker_model)
    assets.resolve_model("face_detection_full_range.tflite")  # found before any work, as infer does
    model = predictors.open_predictor(model_path)
    log(f"[sheet] {model.description}, {model.resolution} px; {len(paths)} photo(s) of {input_spec}")
    rows = build_rows(model, paths, landmarker_model=landmarker_model, log=log)
    sheet = render(rows, model.resolution)
    atomic.write_bytes(output, encode_png(sheet), overwrite=overwrite)
    log(f"[sheet] {len(rows)} row(s), {sheet.shape[1]}x{sheet.shape[0]} -> {output}")
    return {"output": output, "photos": len(paths), "rows": len(rows), "shape": list(sheet.shape)}
