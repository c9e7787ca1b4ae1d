"""The in-browser page (web/, deocc_jax.web) in a real headless Chromium.

The page is served on loopback by `deocc_jax.web` with the ONNX file that
`python -m deocc_jax.export --format=onnx` writes (export_lib, from a
pretrained folder), given a real photo (a public-domain portrait with an
occluder drawn on, as the quickstart does) by drag and drop, the same photo cut
so the face touches its corner (the crop reaches past the photo and is padded
as in training), and a fake camera playing a video of it. Each time the canvas
it shows is checked against the Python path (`restoration.frames.restore_frame`
with the same ONNX file opened by `predictors.open_predictor`, i.e. onnxruntime):

- pixels inside the occluder changed, pixels outside the face's crop are
  byte-for-byte the input;
- with the page's own landmarks, the Python path gives the same picture to
  within `SAME_LANDMARKS_MAX_DIFF` grey levels (see there for why);
- with Python's own MediaPipe landmarks, within `OWN_LANDMARKS_*`.

Chromium is Debian's package (`apt-get install -y chromium`, which .ci/run
does); Playwright drives it and never downloads a browser of its own.

The screenshot in docs/web.md is made by this module too:

    python -m tests.test_web --model=exports/deocc/deocc-<step>.onnx \
        --screenshot=docs/images/web_demo.png
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

import cv2
import jax
import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from configs import tiny
from deocc_jax import errors, models
from deocc_jax.artifacts import export_lib, loading, predictors
from deocc_jax.faces import sample_photos
from deocc_jax.restoration import infer_lib
from deocc_jax.serving import web_lib
from deocc_jax.faces import align
from deocc_jax.faces import landmarks as lmk
from deocc_jax.faces.detect import FaceAnalyzer, largest_face
from deocc_jax.restoration import blend, frames
from launch import demo_photo
import pathlib
import time

CHROMIUM = os.environ.get("DEOCC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESOLUTION = 32           # the model's crop side: configs/tiny.py's
TIMEOUT_MS = 90_000       # page start (two WebAssembly runtimes) on a busy 2-core machine

# With the page's own landmarks both paths align, run and blend the same
# numbers, and what is left is rounding. The page's ports of OpenCV repeat its
# float32 arithmetic (crops: 0-2 values in 10^5 differ by 1), except in the
# constant-border warp that pastes the face back (a few values in 10^4 by 1),
# and onnxruntime-web's WASM kernels sum in another order than onnxruntime's,
# which moves a few model outputs by 1 grey level (and a mask value next to
# the 0.5 threshold could flip a pixel of the hard mask, which the feathering
# then spreads as a fraction of a grey level). Measured, page vs Python, on
# this photo: configs/tiny.py (32 px) max 1, 1e-6 of all values differ;
# configs/realtime.py (128 px) max 1, 8e-5; configs/reference.py (128 px)
# max 1, 3e-4. The bounds leave room for other models and photos.
SAME_LANDMARKS_MAX_DIFF = 2
SAME_LANDMARKS_MAX_CHANGED = 0.005   # fraction of all values that may differ at all
# Aligned crops, plain (warpToCrop) or padded beyond the photo (paddedCrop), vs
# align.warp_to_crop / align.padded_crop: both interpolate in float32 FMAs but
# not always in the same order, and the padded fill's Gaussian blur sums in
# another order than OpenCV's, so a value on a .5 boundary may round the other
# way. Measured: plain crops <= 0.06 % of values differ by 1; padded crops of
# faces at and past each edge (32-256 px) <= 3e-5 of values, by 1; the edge
# photo's 32 px crop 1 value of 3072 (3e-4), by 1.
CROP_MAX_DIFF = 1
CROP_MAX_CHANGED = 0.002
# With each side's own MediaPipe (npm @mediapipe/tasks-vision 1.1.0 in the
# page, PyPI mediapipe in Python) the landmarks agree to 0.001 px on the
# astronaut, and the results by 0.003 grey levels on average over the blended
# region (measured). The bounds are loose: they catch a wrong landmark
# convention (pixel centres, mirrored x, another face), not rounding.
OWN_LANDMARKS_MAX_PX = 0.05      # landmark distance, photo pixels
OWN_LANDMARKS_MEAN_DIFF = 0.25   # mean |difference| over the blended region, grey levels


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.path.isfile(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found: CI must install it (apt-get install -y chromium)")
        pytest.skip(f"Chromium is not installed ({CHROMIUM}); install it with "
                    "`apt-get update && apt-get install -y chromium`")
    return CHROMIUM


@pytest.fixture(scope="module")
def web_build() -> str:
    """web/dist, rebuilt (offline, seconds) when web/src changed and node_modules is there."""
    try:
        return web_lib.check_build()
    except errors.UserError as e:
        if not os.path.isdir(os.path.join(web_lib.WEB_DIR, "node_modules")) or not shutil.which("npm"):
            pytest.fail(str(e))
    subprocess.run(["npm", "run", "build"], cwd=web_lib.WEB_DIR, check=True, stdout=subprocess.DEVNULL)
    return web_lib.check_build()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> str:
    """configs/tiny.py's generator (seeded, untrained) as a pretrained folder, exported by
    `export_lib.export_model(formats=("onnx",))`: the file `python -m deocc_jax.export
    --format=onnx` writes and docs/web.md tells users to serve.

    Untrained is enough here: the test compares two runtimes of one model, and
    its mask is above 0.5 on about half of a crop, so the blend covers the face.
    """
    config = tiny.get_config()
    assert config.resolution == RESOLUTION
    variables = jax.jit(functools.partial(models.init_generator, config))(jax.random.key(0))
    root = tmp_path_factory.mktemp("model")
    loading.save_pretrained(str(root / "pretrained"), config, variables, step=7, name="tiny")
    out = export_lib.export_model(str(root / "pretrained"), str(root / "exports"),
                                  formats=("onnx",), log=lambda _: None)
    path = out["exports"]["onnx"]["path"]
    assert path == str(root / "exports" / "deocc-7.onnx"), path
    return path


@pytest.fixture(scope="module")
def python_model(onnx_model):
    """The Python path's model: the same file, opened as `deocc_jax.infer --model=x.onnx` does."""
    return predictors.open_predictor(onnx_model)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> dict:
    """The astronaut portrait with a procedural occluder drawn on, as the quickstart's demo."""
    original_path = sample_photos.face_photo_paths()[0]
    path = write_demo_photo(str(tmp_path_factory.mktemp("photo")))
    image = infer_lib.read_rgb(path)
    original = infer_lib.read_rgb(original_path)
    # The occluder is wherever drawing it changed the photo.
    occluder = np.abs(image.astype(int) - original).max(-1) > 40
    assert occluder.sum() > 500, "the demo occluder should cover part of the face"
    return {"path": path, "image": image, "occluder": occluder}


# Where the occluded portrait is cut for `edge_photo`: its face's forehead and
# left cheek then touch the photo's top and left edges (face landmarks span
# x 181-270, y 72-177 in the 512 px portrait).
EDGE_CUT_YX = (100, 170)


@pytest.fixture(scope="module")
def edge_photo(photo, tmp_path_factory) -> dict:
    """The occluded portrait cut so the face sits in its top-left corner.

    About half of the face's 32 px crop then lies beyond the photo, where the
    crop is filled as the training crops were (`align.padded_crop`); the rest
    of the photo (body, shuttle) lies outside the crop's footprint.
    """
    y, x = EDGE_CUT_YX
    image = np.ascontiguousarray(photo["image"][y:, x:])
    path = str(tmp_path_factory.mktemp("edge") / "edge.png")
    infer_lib.write_rgb(path, image)
    return {"path": path, "image": image, "occluder": photo["occluder"][y:, x:]}


def _write_y4m(path: str, frames: list[np.ndarray], fps: int = 30) -> str:
    """An uncompressed YUV 4:2:0 video: what Chromium's fake camera plays in a loop."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def camera_clip(photo, tmp_path_factory) -> str:
    """A short clip of the occluded portrait, panning a few pixels per frame."""
    image = photo["image"]
    size = 480
    frames = [np.ascontiguousarray(image[d:d + size, d:d + size]) for d in range(0, 24, 3)]
    return _write_y4m(str(tmp_path_factory.mktemp("camera") / "clip.y4m"), frames)


@pytest.fixture(scope="module")
def server(onnx_model, web_build):
    with serving(onnx_model) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(chromium, camera_clip):
    with sync_playwright() as p:
        b = launch_browser(p, chromium, camera_clip)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """The page, loaded and ready; `page.requests` lists every request it made."""
    with opened_page(browser, server) as pg:
        yield pg


# ----------------------------------------------------------------------------- helpers


DEMO_PHOTO = "astronaut_occluded.png"


def write_demo_photo(out_dir: str) -> str:
    """The quickstart's demo: the astronaut portrait with an occluder drawn on (seed 0)."""
    return demo_photo.occluded_demo_photo(sample_photos.face_photo_paths()[0],
                                          os.path.join(out_dir, DEMO_PHOTO), seed=0,
                                          occluders_dir=None)


@contextlib.contextmanager
def serving(model_path: str):
    """`deocc_jax.web`'s server for `model_path` on a free loopback port, in a thread."""
    srv = web_lib.PageServer(model_path, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def launch_browser(playwright, chromium: str, camera_clip: str | None = None):
    """Headless Chromium; with `camera_clip` (a .y4m) as a fake camera that needs no prompt."""
    camera = [] if camera_clip is None else [
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera_clip}"]
    return playwright.chromium.launch(executable_path=chromium, headless=True,
                                      args=CHROMIUM_FLAGS + camera)


@contextlib.contextmanager
def opened_page(browser, server, viewport: tuple[int, int] = (1100, 720)):
    """The page in a fresh browser context, loaded and ready.

    `page.requests` lists every request it made, `page.errors` its uncaught errors.

    Raises:
      RuntimeError: the page did not start (its state's error says why).
    """
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        context.grant_permissions(["camera"], origin=server.url.rstrip("/"))
        pg = context.new_page()
        pg.requests = []
        pg.errors = []
        pg.on("request", lambda r: pg.requests.append((r.method, r.url)))
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto(server.url)
        wait_for(pg, "window.deocc && window.deocc.state.ready")
        state = pg.evaluate("() => window.deocc.state")
        if not state["ready"]:
            raise RuntimeError(f"the page did not start: {state['error']}; errors: {pg.errors}")
        yield pg
    finally:
        context.close()


_READ_CANVAS = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let s = "";
  for (let i = 0; i < d.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  }
  return [c.width, c.height, btoa(s)];
}"""


def wait_for(page, condition: str) -> None:
    """Waits until a JavaScript condition holds on the page, or the page reports an error."""
    page.wait_for_function(f"() => ({condition}) || (window.deocc && window.deocc.state.error)",
                           timeout=TIMEOUT_MS)
    error = page.evaluate("() => window.deocc.state.error")
    assert not error, f"the page reports: {error}"


def read_canvas(page, canvas_id: str) -> np.ndarray:
    """uint8 [H, W, 3] of what a canvas shows."""
    w, h, data = page.evaluate(_READ_CANVAS, canvas_id)
    rgba = np.frombuffer(base64.b64decode(data), np.uint8).reshape(h, w, 4)
    assert (rgba[..., 3] == 255).all(), f"#{canvas_id} is not opaque"
    return rgba[..., :3].copy()


def drop_file(page, path: str, mime: str = "image/png") -> None:
    """Drops a file on the page as a user dragging it from a file manager would."""
    data = base64.b64encode(open(path, "rb").read()).decode()
    page.evaluate("""([b64, name, mime]) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, { type: mime }));
      document.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
    }""", [data, os.path.basename(path), mime])


def restore_dropped(page, path: str) -> dict:
    """Drops a photo on the page and waits for its result; returns `window.deocc.state.last`."""
    frames = page.evaluate("() => window.deocc.state.frames")
    drop_file(page, path)
    wait_for(page, f"window.deocc.state.frames > {frames}")
    return page.evaluate("() => window.deocc.state.last")


def page_landmarks(last: dict) -> list[np.ndarray]:
    return [np.asarray(f, np.float32) for f in last["faces"]]


_PAGE_CROP = """([img, w, h, m, r, padded]) => {
  const g = window.deocc.geometry;
  const rgb = Uint8Array.from(atob(img), (c) => c.charCodeAt(0));
  const crop = padded ? g.paddedCrop(rgb, w, h, m, r) : { image: g.warpToCrop(rgb, w, h, m, r) };
  let s = "";
  for (let i = 0; i < crop.image.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, crop.image.subarray(i, i + 0x8000));
  }
  return [btoa(s), crop.paddingFraction ?? null];
}"""


def page_crop(page, image: np.ndarray, m: np.ndarray, r: int, padded: bool = True
              ) -> tuple[np.ndarray, float | None]:
    """The page's crop of `image` (geometry.paddedCrop, or warpToCrop) and its padding fraction."""
    h, w = image.shape[:2]
    data, fraction = page.evaluate(_PAGE_CROP, [base64.b64encode(image.tobytes()).decode(), w, h,
                                                np.asarray(m).ravel().tolist(), r, padded])
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(r, r, 3), fraction


def check_crop(got: np.ndarray, want: np.ndarray, what: str) -> dict:
    """Page crop vs Python crop within CROP_MAX_DIFF on at most CROP_MAX_CHANGED of the values."""
    diff = np.abs(got.astype(int) - want)
    frac = float((diff > 0).mean())
    assert diff.max() <= CROP_MAX_DIFF and frac <= CROP_MAX_CHANGED, (
        f"{what}: page vs Python crop max {diff.max()} grey levels, {frac:.4%} of values differ")
    return {"max_diff": int(diff.max()), "frac_diff": frac}


def check_restored(before: np.ndarray, after: np.ndarray, last: dict, model,
                   occluder: np.ndarray | None, min_outside: float = 0.3) -> dict:
    """Checks one page frame against the Python path on the same input; returns measurements.

    `min_outside` is the least share of the photo that must lie outside the
    face crop's footprint (where nothing may change).
    """
    h, w = before.shape[:2]
    faces = page_landmarks(last)
    assert len(faces) == 1, f"the page found {len(faces)} faces, expected the portrait's one"
    # The page's matrix is align.alignment_matrix of its landmarks.
    py_matrix = align.alignment_matrix(faces[0], RESOLUTION)
    np.testing.assert_allclose(np.asarray(last["matrices"][0]).reshape(2, 3), py_matrix,
                               rtol=0, atol=1e-9)
    padding = align.padding_fraction(py_matrix, (h, w), RESOLUTION)
    assert abs(last["padding"][0] - padding) < 1e-9, (last["padding"], padding)

    restored = frames.restore_frame(before, faces, model)
    want, weights = restored.image, restored.weights
    diff = np.abs(after.astype(int) - want)
    # Outside the crop's footprint nothing may change, to the byte.
    x0, y0, x1, y1 = blend.crop_roi(py_matrix, RESOLUTION, (h, w))
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert outside.sum() > min_outside * h * w
    np.testing.assert_array_equal(after[outside], before[outside])
    changed = np.abs(after.astype(int) - before).max(-1) > 0
    if occluder is not None:
        # Inside the occluder the restored face replaced most of it.
        frac = changed[occluder].mean()
        assert frac > 0.5, f"only {frac:.0%} of the occluder's pixels changed"
    frac = float((diff > 0).mean())
    assert diff.max() <= SAME_LANDMARKS_MAX_DIFF and frac <= SAME_LANDMARKS_MAX_CHANGED, (
        f"page vs Python with the same landmarks: max {diff.max()} grey levels, "
        f"{frac:.3%} of values differ")
    return {"max_diff": int(diff.max()), "frac_diff": float((diff > 0).mean()),
            "blended_px": int((weights > 0).sum()), "changed_px": int(changed.sum()),
            "padding": padding}


# ----------------------------------------------------------------------------- tests


def _synthetic_face(shift: tuple[float, float] = (0, 0), size: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random 320x240 photo and landmarks of a face centred at (150, 135) + shift.

    At `size` 1 the eyes are 105 px apart, so the face's crop (about 4 eye
    distances) is larger than the photo.
    """
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), np.uint8), (0, 0), 2)
    # A horizontal gradient, so a reflection is not its own median colour.
    image[..., 0] = np.clip(image[..., 0].astype(int) + np.arange(320)[None] // 3, 0, 255)
    lm = rng.uniform(60, 200, (478, 2)).astype(np.float32)
    # The five alignment points, and cheeks, forehead and chin where a real face has them
    # (cheek to cheek over forehead to chin 0.65: no squeeze, align.unstretch_matrix).
    for i, (x, y) in {33: (100, 100), 133: (130, 104), 263: (205, 96), 362: (172, 99),
                      1: (150, 142), 61: (122, 172), 291: (183, 170), 234: (85, 120),
                      454: (215, 118), 10: (152, 30), 152: (150, 230)}.items():
        lm[i] = (150 + size * (x - 150) + shift[0], 135 + size * (y - 135) + shift[1])
    return image, lm


def test_port_matches_python_geometry(page):
    """The page's alignment, crop (area pre-shrink included) and blend weights are Python's."""
    rng = np.random.default_rng(1)
    image, lm = _synthetic_face()
    for r in (32, 128, 256):   # scales 0.3 (pre-shrink), 1.1 and 2.3 crop px per photo px
        m = align.alignment_matrix(lm, r)
        mask = cv2.GaussianBlur(rng.random((r, r)).astype(np.float32), (0, 0), r / 8)
        mask = (mask - mask.min()) / (mask.max() - mask.min())
        got = page.evaluate("""([lm, r, mask, w, h]) => {
          const d = window.deocc;
          const m = d.geometry.alignmentMatrix(lm, r);
          const alpha = d.blend.blendAlphaCrop(Float32Array.from(mask), r);
          return { m, alpha: Array.from(alpha), roi: d.blend.cropRoi(m, r, w, h) };
        }""", [lm.tolist(), r, mask.ravel().tolist(), 320, 240])
        np.testing.assert_allclose(np.asarray(got["m"]).reshape(2, 3), m, rtol=0, atol=1e-9)
        crop, _ = page_crop(page, image, m, r, padded=False)
        check_crop(crop, align.warp_to_crop(image, m, r), f"warpToCrop {r} px")
        np.testing.assert_allclose(np.asarray(got["alpha"]).reshape(r, r),
                                   blend.blend_alpha_crop(mask, r), rtol=0, atol=1e-6)
        assert tuple(got["roi"]) == blend.crop_roi(m, r, (240, 320))


# A stretched picture: the portrait's landmarks with x scaled this much about their centre.
STRETCH = 1.5
# The occluded portrait stretched this much in x: the landmarker still fits a real face's
# shape to it at 1.5 (aspect 0.81: the occluder hides a cheek); at 2 the full-range stage
# finds it, 1.28 times as wide as tall (measured in Python).
PHOTO_STRETCH = 2.0


@pytest.fixture(scope="module")
def portrait_landmarks() -> np.ndarray:
    """Python's MediaPipe landmarks of the (unoccluded) astronaut portrait."""
    image = infer_lib.read_rgb(sample_photos.face_photo_paths()[0])
    with FaceAnalyzer(mode="image", full_range=False) as analyzer:
        return largest_face(analyzer.detect(image)).landmarks


def test_port_aligns_real_and_stretched_faces_like_python(page, portrait_landmarks):
    """alignmentMatrix is align.alignment_matrix on a real face (a similarity) and on the
    same face stretched (squeezed back along the cheek line first: an affine)."""
    real = np.asarray(portrait_landmarks, np.float32)
    centre = real.mean(0)
    stretched = ((real - centre) * [STRETCH, 1.0] + centre).astype(np.float32)
    constants = page.evaluate("""() => { const g = window.deocc.geometry;
      return [g.MAX_FACE_ASPECT, g.LEFT_CHEEK, g.RIGHT_CHEEK, g.FOREHEAD, g.CHIN]; }""")
    assert constants == [align.MAX_FACE_ASPECT, lmk.LEFT_CHEEK, lmk.RIGHT_CHEEK, lmk.FOREHEAD,
                         lmk.CHIN]
    measured = {}
    for name, lm in (("real", real), ("stretched", stretched)):
        aspect = align.face_aspect(lm)
        assert (aspect > align.MAX_FACE_ASPECT) == (name == "stretched"), (name, aspect)
        for r in (32, 256):
            want = align.alignment_matrix(lm, r)
            got = np.asarray(page.evaluate(
                "([lm, r]) => window.deocc.geometry.alignmentMatrix(lm, r)", [lm.tolist(), r]))
            got = got.reshape(2, 3)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
            # A similarity's linear part is [[a, -b], [b, a]]; the squeeze makes it none.
            skew = abs(want[0, 0] - want[1, 1]) + abs(want[0, 1] + want[1, 0])
            assert (skew > 0.05 * align.matrix_scale(want)) == (name == "stretched"), (name, want)
            measured[f"{name} {r}"] = {"aspect": round(aspect, 3),
                                       "max_abs_diff": float(np.abs(got - want).max())}
    print("alignment:", json.dumps(measured))


def test_stretched_photo_restored_like_python(page, photo, python_model, tmp_path):
    """A stretched picture's face is aligned with an affine; the page crops, runs and pastes
    it back as the Python path does."""
    h, w = photo["image"].shape[:2]
    size = (round(w * PHOTO_STRETCH), h)
    image = cv2.resize(photo["image"], size, interpolation=cv2.INTER_LINEAR)
    occluder = cv2.resize(photo["occluder"].astype(np.uint8), size,
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    path = str(tmp_path / "stretched.png")
    infer_lib.write_rgb(path, image)
    last = restore_dropped(page, path)
    before, after = read_canvas(page, "before"), read_canvas(page, "after")
    np.testing.assert_array_equal(before, image)
    faces = page_landmarks(last)
    assert len(faces) == 1 and align.face_aspect(faces[0]) > align.MAX_FACE_ASPECT, last["faces"]
    same = check_restored(before, after, last, python_model, occluder)
    print("stretched photo:", json.dumps({**same, "aspect": align.face_aspect(faces[0])}))


def test_port_applies_the_harm_gate_as_python_does(page):
    """Small predicted-mask regions keep the input on the page as in infer and live."""
    r = 128
    mask = np.zeros((r, r), np.float32)
    mask[70:110, 30:100] = 0.9          # an occluder: kept
    mask[10:14, 10:14] = 0.8            # specks below MIN_COMPONENT_FRAC: gated
    mask[20:23, 100:126] = 0.7
    mask[50, 50] = mask[51, 51] = 0.9   # diagonal neighbours: one 8-connected region
    got = page.evaluate("""([mask, r]) => {
      const b = window.deocc.blend;
      return Array.from(b.blendAlphaCrop(Float32Array.from(mask), r, b.MIN_COMPONENT_FRAC));
    }""", [mask.ravel().tolist(), r])
    want = blend.blend_alpha_crop(mask, r, blend.MIN_COMPONENT_FRAC)
    np.testing.assert_allclose(np.asarray(got).reshape(r, r), want, rtol=0, atol=1e-6)
    assert want[12, 12] == 0 and want[90, 60] > 0.999   # the gate acted, the occluder stayed


# (shift, size) of `_synthetic_face`: the crop well inside the photo (a plain
# warp); its corner 0.1 px inside the left edge (padded path: the blur that
# hides the seam starts inside the photo, no fill); 18 px past the left edge
# (15 % fill); past the top (16 %); past the bottom and right (61-63 %).
PADDING_CASES = {"inside": ((0, 0), 0.4), "touching-left": ((-92, 0), 0.4),
                 "past-left": ((-110, 0), 0.4), "past-top": ((0, -60), 0.6),
                 "past-bottom-right": ((150, 90), 1.0)}


@pytest.mark.parametrize("case", PADDING_CASES)
def test_port_pads_crops_like_python(page, case):
    """paddedCrop is align.padded_crop for faces inside the photo, at its edge and past it."""
    image, lm = _synthetic_face(*PADDING_CASES[case])
    measured = {}
    for r in (32, 128, 256):   # scales 0.1-0.3 (pre-shrink), 0.5-1.1 and 0.9-2.3
        m = align.alignment_matrix(lm, r)
        want = align.padded_crop(image, m, r)
        crop, fraction = page_crop(page, image, m, r)
        assert fraction == want.padding_fraction, (r, fraction, want.padding_fraction)
        measured[r] = {"padding": fraction, **check_crop(crop, want.image, f"{case} {r} px")}
        plain = align.warp_to_crop(image, m, r)
        changed = float((plain != want.image).mean())
        if case == "inside":
            np.testing.assert_array_equal(want.image, plain)
        else:
            # The padded crop is no plain warp here (>= 4.6 % of values differ),
            # so a page that only warped would fail check_crop (<= 0.2 %).
            assert changed > 0.02, (case, r, changed)
    print("padded crops", case, json.dumps(measured))


def test_photo_restored_like_python(page, photo, python_model):
    last = restore_dropped(page, photo["path"])
    assert last and last["source"] == f"photo {DEMO_PHOTO}", last
    before, after = read_canvas(page, "before"), read_canvas(page, "after")
    # The browser decoded the PNG to the same bytes OpenCV reads.
    np.testing.assert_array_equal(before, photo["image"])
    same = check_restored(before, after, last, python_model, photo["occluder"])

    # Python's own detection (mediapipe from PyPI) on the same photo.
    with FaceAnalyzer(mode="image", num_faces=8, min_confidence=0.3) as analyzer:
        face = largest_face(analyzer.detect(photo["image"]))
    own = np.linalg.norm(face.landmarks - page_landmarks(last)[0], axis=-1)
    restored = frames.restore_frame(photo["image"], [face.landmarks], python_model)
    want, weights = restored.image, restored.weights
    region = weights > 0
    mean_diff = float(np.abs(after.astype(int) - want)[region].mean())
    report = {**same, "landmark_px_max": float(own.max()), "landmark_px_mean": float(own.mean()),
              "own_landmarks_mean_diff": mean_diff, "ms": last["ms"]}
    print("photo:", json.dumps(report))
    assert own.max() <= OWN_LANDMARKS_MAX_PX, report
    assert mean_diff <= OWN_LANDMARKS_MEAN_DIFF, report
    status = page.text_content("#status")
    assert "1 face(s)" in status and "model" in status, status


def test_face_at_the_photo_edge_restored_like_python(page, edge_photo, python_model):
    """A crop that reaches past the photo is padded as in training, on the page as in Python."""
    last = restore_dropped(page, edge_photo["path"])
    assert last and last["source"] == "photo edge.png", last
    before, after = read_canvas(page, "before"), read_canvas(page, "after")
    np.testing.assert_array_equal(before, edge_photo["image"])
    same = check_restored(before, after, last, python_model, edge_photo["occluder"],
                          min_outside=0.6)
    assert same["padding"] > 0.3, same
    # The crop the page ran the model on is Python's (the page's own landmarks).
    m = align.alignment_matrix(page_landmarks(last)[0], RESOLUTION)
    crop, _ = page_crop(page, before, m, RESOLUTION)
    same["crop"] = check_crop(crop, align.padded_crop(before, m, RESOLUTION).image, "edge photo")
    print("edge photo:", json.dumps(same))


def test_photo_without_a_face_is_shown_unchanged(page):
    path = sample_photos.no_face_photo_path()
    restore_dropped(page, path)
    assert page.evaluate("() => window.deocc.state.last.faces.length") == 0
    after = read_canvas(page, "after")
    np.testing.assert_array_equal(after, infer_lib.read_rgb(path))
    assert "no face found" in page.text_content("#status")


# ----------------------------------------------------------------------------- the face finder

# The page's face finder (web/src/faces.js) against deocc_jax.faces.detect on
# photos of ../shared/data/real_masked (people in real masks; read in place,
# never copied). Picked by running FaceAnalyzer on all 199: in the first seven
# the face landmarker alone finds no face and the full-range stage finds one
# (two in with_mask638); with_mask118's two detections are rejected as not a
# face; Screenshot_256 gives the detector nothing. Small photos keep the test
# fast. Of 16 photos tried the two finders disagreed on one, with_mask478, a
# threshold case (face presence 0.48 in the page, just above 0.5 in Python).
FULL_RANGE_PHOTOS = ("Screenshot_322.png", "with_mask450.jpg", "with_mask486.jpg",
                     "with_mask602.jpg", "with_mask614.jpeg", "with_mask638.jpeg",
                     "with_mask646.jpeg")
NOT_FOUND_PHOTOS = ("with_mask118.jpg", "Screenshot_256.png")
PAGE_MAX_FACES = 4          # web/src/main.js's MAX_FACES
# Both finders landmark the same faces: the landmark boxes of a face overlap at least this much.
SAME_FACE_MIN_IOU = 0.7
# A photo with several full-range detections (and tiles) for the decoding checks.
DECODING_PHOTO = "with_mask650.jpeg"


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


def test_page_finds_the_faces_python_finds(page, shared_dir):
    """Which photos have a face, how many and where: the page's two stages as Python's."""
    masked = shared_dir / "data" / "real_masked"
    paths = [str(masked / n) for n in FULL_RANGE_PHOTOS + NOT_FOUND_PHOTOS]
    paths.append(sample_photos.no_face_photo_path())
    rows = []
    with FaceAnalyzer(mode="image", num_faces=PAGE_MAX_FACES) as finder, \
            FaceAnalyzer(mode="image", num_faces=PAGE_MAX_FACES, full_range=False) as alone:
        for path in paths:
            image = infer_lib.read_rgb(path)
            want = finder.find(image)
            last = restore_dropped(page, path)
            got = last["search"]
            assert last["faces"] == [g["landmarks"] for g in got["faces"]]  # restores what it found
            ious = [max([_box_iou(f.bbox, landmark_box(g["landmarks"])) for g in got["faces"]],
                        default=0.0) for f in want.faces]
            rows.append({
                "photo": os.path.basename(path), "landmarker_alone": len(alone.detect(image)),
                "python": [f.source for f in want.faces], "page": [f["source"] for f in got["faces"]],
                "python_reason": want.reason, "page_reason": got["reason"],
                "min_iou": round(float(min(ious, default=1.0)), 3), "page_ms": round(last["ms"]["detect"])})
    print("finder:", json.dumps(rows))
    # The photos still need the second stage (the Python finder may change).
    second = [r["photo"] for r in rows if r["landmarker_alone"] == 0 and r["python"]]
    assert len(second) >= 6, rows
    assert any(not r["python"] for r in rows), rows
    agree = sum(bool(r["python"]) == bool(r["page"]) for r in rows)
    assert agree == len(rows), f"page and Python agree on {agree} of {len(rows)} photos: {rows}"
    assert all(r["python"] == r["page"] and r["python_reason"] == r["page_reason"] for r in rows), rows
    assert all(r["min_iou"] >= SAME_FACE_MIN_IOU for r in rows), rows


def landmark_box(points) -> list[float]:
    pts = np.asarray(points, np.float64)
    return [*pts.min(0), *pts.max(0)]


# A UTKFace tight face crop (read in place): the face fills the photo, so the whole-photo
# pass and the tiles miss it and the landmarker's face is turned away; the Python finder
# finds it only in the photo shrunk into a padded canvas (cascade.tight_crop_detections).
TIGHT_CROP_PHOTO = "36_1_0_20170116222807886.jpg.chip.jpg"

_PAGE_TIGHT = """async ([img, w, h]) => {
  const rgb = Uint8Array.from(atob(img), (c) => c.charCodeAt(0));
  return window.deocc.finder.tightCropDetections(rgb, w, h);
}"""


def test_page_finds_a_tight_face_crop_like_python(page, shared_dir, monkeypatch):
    """The padded-canvas pass: the same detections, and the same face found through them."""
    from deocc_jax.faces import cascade, detect

    path = str(shared_dir / "data" / "utkface" / TIGHT_CROP_PHOTO)
    image = infer_lib.read_rgb(path)
    h, w = image.shape[:2]
    with FaceAnalyzer(mode="image", num_faces=PAGE_MAX_FACES) as finder:
        want = finder.find(image)
        tight = cascade.tight_crop_detections(image, finder._detector)
        with monkeypatch.context() as m:   # without the new pass, no face
            m.setattr(cascade, "tight_crop_detections", lambda *_: [])
            assert not finder.find(image).faces
    assert [f.source for f in want.faces] == [detect.FULL_RANGE] and want.reason is None, want
    got_tight = page.evaluate(_PAGE_TIGHT, [base64.b64encode(image.tobytes()).decode(), w, h])
    want_tight = _detections_table([{"box": d.box, "keypoints": d.keypoints, "score": d.score}
                                    for d in tight])
    got_tight = _detections_table(got_tight)
    assert len(got_tight) == len(want_tight) == 1, (got_tight, want_tight)
    # Resampling (OpenCV vs its port) and the two runtimes move boxes by a fraction of a pixel.
    np.testing.assert_allclose(got_tight[:, :16], want_tight[:, :16], atol=1.0)
    np.testing.assert_allclose(got_tight[:, 16], want_tight[:, 16], atol=0.02)

    last = restore_dropped(page, path)
    got = last["search"]
    assert [f["source"] for f in got["faces"]] == [detect.FULL_RANGE], got
    assert got["reason"] is None and got["rejected"] == want.rejected, (got, want)
    iou = _box_iou(want.faces[0].bbox, landmark_box(got["faces"][0]["landmarks"]))
    box_px = float(np.abs(got_tight - want_tight)[:, :16].max())
    print("tight crop:", json.dumps({"iou": round(iou, 3), "box_max_px": box_px,
                                     "page_ms": round(last["ms"]["detect"])}))
    assert iou >= SAME_FACE_MIN_IOU, iou


_PAGE_DECODE = """([reg, logits, lb, minScore]) => {
  const d = window.deocc.finder.detector, f = window.deocc.faces;
  const probe = new f.FullRangeDetector(null, d.s, { minScore });
  const c = probe.candidates(Float32Array.from(reg), Float32Array.from(logits), lb);
  return f.weightedNms(c, d.s.nms_iou);
}"""

_PAGE_DETECT = """async ([img, w, h]) => {
  const rgb = Uint8Array.from(atob(img), (c) => c.charCodeAt(0));
  return window.deocc.finder.detector.detect(rgb, w, h);
}"""


def _detections_table(dets) -> np.ndarray:
    """[N, 17]: box, keypoints and score of each detection, best first."""
    return np.array([[*np.ravel(d["box"]), *np.ravel(d["keypoints"]), d["score"]] for d in dets]
                    ).reshape(-1, 17)


def test_page_decodes_full_range_detections_like_python(page, shared_dir):
    """Anchors, boxes, keypoints and weighted NMS (the same raw outputs), then the whole
    detector (letterbox, tiles, onnxruntime-web) on a photo with several faces."""
    from deocc_jax.faces import blazeface, cascade

    image = infer_lib.read_rgb(str(shared_dir / "data" / "real_masked" / DECODING_PHOTO))
    settings = page.evaluate("() => window.deocc.state.config.faces.settings.detector")
    with blazeface.FullRangeDetector(min_score=cascade.CONFIRM_SCORE,
                                     min_face_px=cascade.DEFAULT_MIN_FACE_PX) as det:
        reg, logits, lb = det.raw(image)
        scores = blazeface.sigmoid_scores(logits)
        keep = scores >= cascade.CONFIRM_SCORE
        boxes, kps = blazeface.decode_boxes(reg[keep], blazeface.anchors()[keep])
        boxes = lb.to_image(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        want = [{"box": b, "keypoints": k, "score": s} for b, k, s in blazeface.weighted_nms(
            boxes, lb.to_image(kps), scores[keep], settings["nms_iou"])]
        whole = det.detect(image)
    got = page.evaluate(_PAGE_DECODE, [reg.ravel().tolist(), logits.ravel().tolist(),
                                       {"scale": lb.scale, "padX": lb.pad_x, "padY": lb.pad_y},
                                       cascade.CONFIRM_SCORE])
    assert len(want) >= 3 and len(got) == len(want), (len(got), len(want))
    np.testing.assert_allclose(_detections_table(got), _detections_table(want), atol=1e-3)

    # The page's own pass: its letterbox and onnxruntime-web against LiteRT.
    h, w = image.shape[:2]
    assert blazeface.tile_sides(w, h, cascade.DEFAULT_MIN_FACE_PX), "the photo should need tiles"
    own = page.evaluate(_PAGE_DETECT, [base64.b64encode(image.tobytes()).decode(), w, h])
    want = _detections_table([{"box": d.box, "keypoints": d.keypoints, "score": d.score}
                              for d in whole])
    got = _detections_table(own)
    print("detector:", json.dumps({"python": len(want), "page": len(got),
                                   "scores": [want[:, -1].round(3).tolist(),
                                              got[:, -1].round(3).tolist()]}))
    assert len(got) == len(want)
    # Resampling (OpenCV vs its port) and the two runtimes move boxes by a fraction of a pixel.
    np.testing.assert_allclose(got[:, :16], want[:, :16], atol=1.0)
    np.testing.assert_allclose(got[:, 16], want[:, 16], atol=0.02)


_PAGE_FIND_VIDEO = """async ([frames, w, h, maxFaces]) => {
  const f = window.deocc.finder, out = [];
  f.resetVideo();
  for (const b64 of frames) {
    const rgb = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const r = await f.findVideo(rgb, w, h, [], maxFaces);
    out.push({ sources: r.faces.map((x) => x.source), boxes: r.faces.map((x) => window.deocc.faces.landmarkBox(x.landmarks)),
               fullRange: r.fullRange });
  }
  f.resetVideo();
  return out;
}"""


class _NoFaces:
    """A video-mode face landmarker that finds nothing."""

    def detect_for_video(self, image, timestamp_ms):
        return type("Result", (), {"face_landmarks": [], "face_blendshapes": []})()

    def close(self):
        pass


def test_page_follows_full_range_faces_in_video_like_python(page, shared_dir):
    """Camera frames: the detector every few frames, its faces tracked in between, as
    `FaceAnalyzer.find_video` does (on a masked face the landmarker misses)."""
    from deocc_jax.faces import detect

    image = infer_lib.read_rgb(str(shared_dir / "data" / "real_masked" / FULL_RANGE_PHOTOS[0]))
    size = min(image.shape[:2]) - 16
    clip = [np.ascontiguousarray(image[d:d + size, d:d + size]) for d in range(0, 16, 2)]
    want = []
    with FaceAnalyzer(mode="video", num_faces=PAGE_MAX_FACES) as finder:
        # MediaPipe's video mode may pick a face up from its own tracking after a
        # while; both sides are given a landmarker that finds nothing, so what is
        # compared is the second stage alone.
        real, finder._landmarker = finder._landmarker, _NoFaces()
        real.close()
        for i, frame in enumerate(clip):
            found = finder.find_video(frame, i * 33)
            want.append(found.faces)
    got = page.evaluate(_PAGE_FIND_VIDEO, [[base64.b64encode(f.tobytes()).decode() for f in clip],
                                           size, size, PAGE_MAX_FACES])
    rows = [{"python": [f.source for f in w], "page": g["sources"], "full_range": g["fullRange"],
             "iou": [round(float(_box_iou(f.bbox, b)), 3) for f, b in zip(w, g["boxes"])]}
            for w, g in zip(want, got)]
    print("video:", json.dumps(rows))
    # The detector ran on frames 0 and FULL_RANGE_EVERY only; the face was followed in between.
    assert [r["full_range"] for r in rows] == [i % detect.FULL_RANGE_EVERY == 0
                                               for i in range(len(clip))], rows
    # The clip exercises both: faces from the detector, and a face followed without it
    # (the tracking region loses this masked face in some frames, in Python as in the page).
    assert rows[0]["python"] == [detect.FULL_RANGE], rows
    assert any(r["python"] and not r["full_range"] for r in rows), rows
    assert all(r["page"] == r["python"] for r in rows), rows
    assert all(min(r["iou"], default=1.0) >= SAME_FACE_MIN_IOU for r in rows), rows


def test_camera_restored_like_python(page, photo, python_model):
    frames = page.evaluate("() => window.deocc.state.frames")
    page.click("#camera")
    wait_for(page, f"window.deocc.state.running && window.deocc.state.frames >= {frames + 4}")
    page.evaluate("() => window.deocc.stopCamera()")
    state = page.evaluate("() => window.deocc.state")
    assert not state["error"] and not state["running"], state
    last = state["last"]
    assert last["source"] == "camera" and state["fps"] > 0, state
    fps_text = page.text_content("#fps")
    assert re.fullmatch(r"\d+\.\d frames/s", fps_text), fps_text
    before, after = read_canvas(page, "before"), read_canvas(page, "after")
    assert before.shape == (480, 480, 3)
    # The camera frame went through YUV 4:2:0, so the occluder is located in
    # the frame itself: the pixels that are the occluder's colours in the photo.
    same = check_restored(before, after, last, python_model, occluder=None)
    occluder = _locate(photo, before)
    changed = np.abs(after.astype(int) - before).max(-1) > 0
    assert changed[occluder].mean() > 0.5, changed[occluder].mean()
    print("camera:", json.dumps({**same, "fps": state["fps"], "frames": state["frames"],
                                 "ms": last["ms"]}))


def _locate(photo: dict, frame: np.ndarray) -> np.ndarray:
    """The photo's occluder mask in a camera frame cut from it (found by template matching)."""
    res = cv2.matchTemplate(photo["image"], frame, cv2.TM_SQDIFF)
    _, _, (x, y), _ = cv2.minMaxLoc(res)
    h, w = frame.shape[:2]
    return photo["occluder"][y:y + h, x:x + w]


def test_page_loads_only_from_its_server(page, server):
    """No CDN, no upload: every request went to the local server, and only to read."""
    assert page.requests
    origin = server.url.rstrip("/")
    foreign = [(m, u) for m, u in page.requests
               if not (u.startswith(origin + "/") or u.startswith(("blob:", "data:")))]
    assert not foreign, foreign
    assert {m for m, _ in page.requests} <= {"GET"}, page.requests
    assert not page.errors, page.errors


# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_on_loopback_and_reports_a_busy_port(onnx_model, web_build):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(web_lib.REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    port = _free_port()
    cmd = [sys.executable, "-m", "deocc_jax.web", f"--model={onnx_model}", f"--port={port}"]
    proc = subprocess.Popen(cmd, env=env, cwd=web_lib.REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        assert line.rstrip().endswith(url), (line, proc.stderr.read() if proc.poll() else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"deocc" in resp.read()
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "connect-src 'self'" in csp
        with urllib.request.urlopen(url + "config.json", timeout=10) as resp:
            assert json.load(resp)["model"]["resolution"] == RESOLUTION
        # Nothing can be sent to it.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"),
                                   timeout=10)
        busy = subprocess.run(cmd, env=env, cwd=web_lib.REPO, capture_output=True, text=True,
                              timeout=60)
        assert busy.returncode == errors.EXIT_USER_ERROR
        assert busy.stderr.strip() == (f"error: port {port} on 127.0.0.1 is already in use; pass "
                                       "another --port (or --port=0 for any free one)"), busy.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def _guided_onnx(path: str) -> str:
    """A graph with a guided model's signature (images and masks in); it only copies them."""
    import onnx  # only this test writes a graph by hand
    from onnx import TensorProto as T, helper as h

    r = RESOLUTION
    graph = h.make_graph(
        [h.make_node("Identity", ["images"], ["deoccluded"]),
         h.make_node("Cast", ["masks"], ["mask"], to=T.FLOAT)], "guided",
        [h.make_tensor_value_info("images", T.UINT8, ["batch", r, r, 3]),
         h.make_tensor_value_info("masks", T.UINT8, ["batch", r, r, 1])],
        [h.make_tensor_value_info("deoccluded", T.UINT8, ["batch", r, r, 3]),
         h.make_tensor_value_info("mask", T.FLOAT, ["batch", r, r, 1])])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), path)
    return path


def test_server_errors_are_one_line(onnx_model, web_build, tmp_path):
    with pytest.raises(errors.InputNotFoundError, match=r"--model '.*nope.onnx' does not exist"):
        web_lib.PageServer(str(tmp_path / "nope.onnx"), port=0)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(errors.InvalidInputError, match="not an ONNX model"):
        web_lib.PageServer(str(bad), port=0)
    guided = _guided_onnx(str(tmp_path / "guided.onnx"))
    with pytest.raises(errors.InvalidInputError, match="a guided model"):
        web_lib.PageServer(guided, port=0)
    # A web/ folder whose page was never built names the build command.
    unbuilt = tmp_path / "web"
    shutil.copytree(web_lib.WEB_DIR, unbuilt, ignore=shutil.ignore_patterns("node_modules", "dist"))
    with pytest.raises(errors.InputNotFoundError, match=re.escape(web_lib.BUILD_COMMAND)):
        web_lib.PageServer(onnx_model, port=0, web_dir=str(unbuilt))
    # A build older than its sources too.
    shutil.copytree(os.path.join(web_lib.WEB_DIR, "dist"), unbuilt / "dist")
    with open(unbuilt / "src" / "main.js", "a") as f:
        f.write("\n// edited\n")
    with pytest.raises(errors.InputNotFoundError, match="rebuild it with"):
        web_lib.PageServer(onnx_model, port=0, web_dir=str(unbuilt))
    # A detector file that is no model (it is converted to ONNX for the page).
    with pytest.raises(errors.InputNotFoundError, match="nope.tflite"):
        web_lib.PageServer(onnx_model, port=0, full_range_model=str(tmp_path / "nope.tflite"))
    (tmp_path / "bad.tflite").write_bytes(b"not a model")
    with pytest.raises(errors.InvalidInputError, match="bad.tflite: not a TFLite model"):
        web_lib.PageServer(onnx_model, port=0, full_range_model=str(tmp_path / "bad.tflite"))


# ----------------------------------------------------------------------------- the screenshot


def take_screenshot(page, photo_path: str, out_path: str) -> str:
    """Drops a photo on the page, waits for its result and saves the whole page as a PNG.

    Returns:
      The page's status line.
    """
    last = restore_dropped(page, photo_path)
    if not last["faces"]:
        raise errors.InvalidInputError(f"{photo_path}: the page found no face in it")
    page.screenshot(path=out_path, full_page=True)
    return page.text_content("#status")


def make_screenshot(model_path: str, out_path: str, *, chromium: str = CHROMIUM,
                    photo_path: str | None = None, viewport: tuple[int, int] = (1000, 740)) -> str:
    """docs/images/web_demo.png: the page restoring the demo photo with `model_path`.

    Serves the page as `deocc_jax.web` does, opens it in headless Chromium and
    drops the quickstart's demo photo (or `photo_path`) on it.

    Returns:
      The page's status line.

    Raises:
      errors.UserError: no Chromium, no (current) web build, a bad model, no face.
    """
    if not os.path.isfile(chromium):
        raise errors.InputNotFoundError(f"{chromium} not found; install Chromium "
                                        "(`apt-get install -y chromium`) or pass --chromium")
    web_lib.check_build()
    with tempfile.TemporaryDirectory() as tmp, serving(model_path) as srv, \
            sync_playwright() as p:
        photo_path = photo_path or write_demo_photo(tmp)
        browser = launch_browser(p, chromium)
        try:
            with opened_page(browser, srv, viewport) as pg:
                return take_screenshot(pg, photo_path, out_path)
        finally:
            browser.close()


def test_screenshot_of_the_demo_photo(page, photo, tmp_path):
    """What `python -m tests.test_web --screenshot=...` saves, on the test's page."""
    out = str(tmp_path / "web_demo.png")
    status = take_screenshot(page, photo["path"], out)
    assert status.startswith(f"{DEMO_PHOTO}: 1 face(s)"), status
    shot = cv2.imread(out)
    assert shot is not None and shot.shape[1] == 1100 and shot.shape[0] >= 720, out
    # Both canvases are in it: the before and after halves show the portrait.
    before = read_canvas(page, "before")
    assert shot.std() > 20 and before.shape == photo["image"].shape


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.test_web --model=M.onnx --screenshot=docs/images/web_demo.png`."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_web",
        description="Saves a screenshot of the web page restoring the demo photo "
                    "(docs/images/web_demo.png).")
    parser.add_argument("--model", required=True,
                        help="blind deocc ONNX model (`python -m deocc_jax.export --format=onnx`)")
    parser.add_argument("--screenshot", required=True, help="the PNG to write")
    parser.add_argument("--photo", help="photo to drop (default: the quickstart's demo photo)")
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium executable")
    parser.add_argument("--width", type=int, default=1000, help="page width in pixels")
    args = parser.parse_args(argv)
    try:
        status = make_screenshot(args.model, args.screenshot, chromium=args.chromium,
                                 photo_path=args.photo, viewport=(args.width, 740))
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_USER_ERROR
    print(f"wrote {args.screenshot} ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- bad paths, hang-ups


def _fake_web_dir(root: pathlib.Path) -> pathlib.Path:
    """A web/ folder with a current build: what check_build accepts, without npm."""
    (root / "src").mkdir(parents=True)
    for name in ("build.mjs", "package.json", "package-lock.json", "src/app.ts"):
        (root / name).write_text(f"// {name}\n")
    dist = root / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html>")
    (dist / "app.js").write_text("console.log(1);\n")
    (dist / "big.wasm").write_bytes(os.urandom(1 << 16) * 512)  # 32 MiB: outlasts socket buffers
    (dist / "build.json").write_text(json.dumps({"source_sha256": web_lib.source_hash(str(root)),
                                                 "vendor": []}))
    return root


def _status(port: int, raw_path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {raw_path} HTTP/1.0\r\n\r\n".encode())
        head = s.recv(200)
    assert head, f"{raw_path}: the server dropped the connection without an answer"
    return int(head.split()[1])


def test_web_server_answers_bad_paths_and_takes_hang_ups_quietly(tmp_path, monkeypatch, capfd):
    import threading
    monkeypatch.setattr(web_lib, "model_info", lambda path: {"name": "m.onnx", "resolution": 64, "bytes": 1})
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    srv = web_lib.PageServer(str(model), port=0, web_dir=str(_fake_web_dir(tmp_path / "web")))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    port = srv.server_address[1]
    try:
        assert _status(port, "/app.js") == 200
        for bad in ("/app.js%00.html", "/%00", "/app%0a.js", "/%ff%fe.js"):
            assert _status(port, bad) == 400, bad
        for missing in ("/nope.js", "/../../etc/passwd", "/" + "a" * 5000):
            assert _status(port, missing) == 404, missing
        for _ in range(3):  # downloads the client abandons
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
                s.sendall(b"GET /big.wasm HTTP/1.0\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.0 200")
        time.sleep(1.0)
        assert _status(port, "/index.html") == 200
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "code 400" in line]
    assert len(lines) == 4 and all("bad path" in line for line in lines), err
