"""The in-browser page (web/, deocc_jax.web) in a real headless Chromium.

The page is served on loopback by `deocc_jax.web`, given a real photo (a
public-domain portrait with an occluder drawn on, as the quickstart does) by
drag and drop, and a fake camera playing a video of it. Each time the canvas
it shows is checked against the Python path (`restoration.frames.restore_frame` with
the same ONNX file opened by `predictors.open_predictor`, i.e. onnxruntime):

- pixels inside the occluder changed, pixels outside the face's crop are
  byte-for-byte the input;
- with the page's own landmarks, the Python path gives the same picture to
  within `SAME_LANDMARKS_MAX_DIFF` grey levels (see there for why);
- with Python's own MediaPipe landmarks, within `OWN_LANDMARKS_*`.

Chromium is Debian's package (`apt-get install -y chromium`, which .ci/run
does); Playwright drives it and never downloads a browser of its own.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import cv2
import jax
import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from configs import tiny
from deocc_jax import errors, infer_lib, models, predictors, sample_photos, web
from deocc_jax.exporters import onnx as onnx_export
from deocc_jax.faces import align
from deocc_jax.faces.detect import FaceAnalyzer, largest_face
from deocc_jax.restoration import blend, frames
from launch import demo_photo

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
        return web.check_build()
    except errors.UserError as e:
        if not os.path.isdir(os.path.join(web.WEB_DIR, "node_modules")) or not shutil.which("npm"):
            pytest.fail(str(e))
    subprocess.run(["npm", "run", "build"], cwd=web.WEB_DIR, check=True, stdout=subprocess.DEVNULL)
    return web.check_build()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> str:
    """configs/tiny.py's generator (seeded, untrained), exported by deocc_jax.exporters.onnx.

    Untrained is enough here: the test compares two runtimes of one model, and
    its mask is above 0.5 on about half of a crop, so the blend covers the face.
    """
    config = tiny.get_config()
    with config.unlocked():
        config.model.conv_impl = "xla_conv"   # one ONNX Conv per convolution (exporters.onnx)
    assert config.resolution == RESOLUTION
    variables = jax.jit(functools.partial(models.init_generator, config))(jax.random.key(0))
    path = str(tmp_path_factory.mktemp("model") / "tiny.onnx")
    return onnx_export.export_onnx(functools.partial(models.predict, config), variables, path,
                                   resolution=config.resolution, guided=models.is_guided(config))


@pytest.fixture(scope="module")
def python_model(onnx_model):
    """The Python path's model: the same file, opened as `deocc_jax.infer --model=x.onnx` does."""
    return predictors.open_predictor(onnx_model)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> dict:
    """The astronaut portrait with a procedural occluder drawn on, as the quickstart's demo."""
    out = tmp_path_factory.mktemp("photo")
    original_path = sample_photos.face_photo_paths()[0]
    path = demo_photo.occluded_demo_photo(original_path, str(out / "occluded.png"), seed=0,
                                          occluders_dir=None)
    image = infer_lib.read_rgb(path)
    original = infer_lib.read_rgb(original_path)
    # The occluder is wherever drawing it changed the photo.
    occluder = np.abs(image.astype(int) - original).max(-1) > 40
    assert occluder.sum() > 500, "the demo occluder should cover part of the face"
    return {"path": path, "image": image, "occluder": occluder}


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
    srv = web.PageServer(onnx_model, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def browser(chromium, camera_clip):
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=CHROMIUM_FLAGS + ["--use-fake-ui-for-media-stream",
                                   "--use-fake-device-for-media-stream",
                                   f"--use-file-for-fake-video-capture={camera_clip}"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """The page, loaded and ready; `page.requests` lists every request it made."""
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.grant_permissions(["camera"], origin=server.url.rstrip("/"))
    pg = context.new_page()
    pg.requests = []
    pg.errors = []
    pg.on("request", lambda r: pg.requests.append((r.method, r.url)))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(server.url)
    wait_for(pg, "window.deocc && window.deocc.state.ready")
    state = pg.evaluate("() => window.deocc.state")
    assert state["ready"], f"the page did not start: {state['error']}; errors: {pg.errors}"
    yield pg
    context.close()


# ----------------------------------------------------------------------------- helpers


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


def page_landmarks(last: dict) -> list[np.ndarray]:
    return [np.asarray(f, np.float32) for f in last["faces"]]


def check_restored(before: np.ndarray, after: np.ndarray, last: dict, model,
                   occluder: np.ndarray | None) -> dict:
    """Checks one page frame against the Python path on the same input; returns measurements."""
    h, w = before.shape[:2]
    faces = page_landmarks(last)
    assert len(faces) == 1, f"the page found {len(faces)} faces, expected the portrait's one"
    # The page's matrix is align.alignment_matrix of its landmarks.
    py_matrix = align.alignment_matrix(faces[0], RESOLUTION)
    np.testing.assert_allclose(np.asarray(last["matrices"][0]).reshape(2, 3), py_matrix,
                               rtol=0, atol=1e-9)

    restored = frames.restore_frame(before, faces, model)
    want, weights = restored.image, restored.weights
    diff = np.abs(after.astype(int) - want)
    # Outside the crop's footprint nothing may change, to the byte.
    x0, y0, x1, y1 = blend.crop_roi(py_matrix, RESOLUTION, (h, w))
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert outside.sum() > 0.3 * h * w
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
            "blended_px": int((weights > 0).sum()), "changed_px": int(changed.sum())}


# ----------------------------------------------------------------------------- tests


def test_port_matches_python_geometry(page):
    """The page's alignment, crop (area pre-shrink included) and blend weights are Python's."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), np.uint8), (0, 0), 2)
    lm = rng.uniform(60, 200, (478, 2)).astype(np.float32)
    for i, p in {33: (100, 100), 133: (130, 104), 263: (205, 96), 362: (172, 99), 1: (150, 142),
                 61: (122, 172), 291: (183, 170)}.items():
        lm[i] = p
    for r in (32, 128, 256):   # scales 0.3 (pre-shrink), 1.1 and 2.3 crop px per photo px
        m = align.alignment_matrix(lm, r)
        mask = cv2.GaussianBlur(rng.random((r, r)).astype(np.float32), (0, 0), r / 8)
        mask = (mask - mask.min()) / (mask.max() - mask.min())
        got = page.evaluate("""([img, w, h, lm, r, mask]) => {
          const d = window.deocc;
          const rgb = Uint8Array.from(atob(img), (c) => c.charCodeAt(0));
          const m = d.geometry.alignmentMatrix(lm, r);
          const crop = d.geometry.warpToCrop(rgb, w, h, m, r);
          const alpha = d.blend.blendAlphaCrop(Float32Array.from(mask), r);
          return { m, crop: Array.from(crop), alpha: Array.from(alpha),
                   roi: d.blend.cropRoi(m, r, w, h) };
        }""", [base64.b64encode(image.tobytes()).decode(), 320, 240, lm.tolist(), r,
               mask.ravel().tolist()])
        np.testing.assert_allclose(np.asarray(got["m"]).reshape(2, 3), m, rtol=0, atol=1e-9)
        crop = np.asarray(got["crop"], np.int64).reshape(r, r, 3)
        want = align.warp_to_crop(image, m, r).astype(np.int64)
        # Both interpolate in float32 FMAs, but not always in the same order: a
        # value on a .5 boundary may round the other way (measured: <= 0.06% of values).
        assert np.abs(crop - want).max() <= 1 and (crop != want).mean() < 0.002, r
        np.testing.assert_allclose(np.asarray(got["alpha"]).reshape(r, r),
                                   blend.blend_alpha_crop(mask, r), rtol=0, atol=1e-6)
        assert tuple(got["roi"]) == blend.crop_roi(m, r, (240, 320))


def test_photo_restored_like_python(page, photo, python_model):
    frames = page.evaluate("() => window.deocc.state.frames")
    drop_file(page, photo["path"])
    wait_for(page, f"window.deocc.state.frames > {frames}")
    last = page.evaluate("() => window.deocc.state.last")
    assert last and last["source"] == "photo occluded.png", last
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


def test_photo_without_a_face_is_shown_unchanged(page):
    frames = page.evaluate("() => window.deocc.state.frames")
    path = sample_photos.no_face_photo_path()
    drop_file(page, path)
    wait_for(page, f"window.deocc.state.frames > {frames}")
    assert page.evaluate("() => window.deocc.state.last.faces.length") == 0
    after = read_canvas(page, "after")
    np.testing.assert_array_equal(after, infer_lib.read_rgb(path))
    assert "no face found" in page.text_content("#status")


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
        [str(web.REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    port = _free_port()
    cmd = [sys.executable, "-m", "deocc_jax.web", f"--model={onnx_model}", f"--port={port}"]
    proc = subprocess.Popen(cmd, env=env, cwd=web.REPO, stdout=subprocess.PIPE,
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
        busy = subprocess.run(cmd, env=env, cwd=web.REPO, capture_output=True, text=True,
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
        web.PageServer(str(tmp_path / "nope.onnx"), port=0)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(errors.InvalidInputError, match="not an ONNX model"):
        web.PageServer(str(bad), port=0)
    guided = _guided_onnx(str(tmp_path / "guided.onnx"))
    with pytest.raises(errors.InvalidInputError, match="a guided model"):
        web.PageServer(guided, port=0)
    # A web/ folder whose page was never built names the build command.
    unbuilt = tmp_path / "web"
    shutil.copytree(web.WEB_DIR, unbuilt, ignore=shutil.ignore_patterns("node_modules", "dist"))
    with pytest.raises(errors.InputNotFoundError, match=re.escape(web.BUILD_COMMAND)):
        web.PageServer(onnx_model, port=0, web_dir=str(unbuilt))
    # A build older than its sources too.
    shutil.copytree(os.path.join(web.WEB_DIR, "dist"), unbuilt / "dist")
    with open(unbuilt / "src" / "main.js", "a") as f:
        f.write("\n// edited\n")
    with pytest.raises(errors.InputNotFoundError, match="rebuild it with"):
        web.PageServer(onnx_model, port=0, web_dir=str(unbuilt))
