// The page: camera or dropped photo -> MediaPipe face landmarks plus the
// full-range detector's faces (faces.js) -> deocc's alignment, ONNX model
// and blending -> before | after, all in this tab.
//
// Every file it loads comes from the server that served it (deocc_jax.web);
// frames are never sent anywhere (the server also forbids other origins with
// a Content-Security-Policy).

import * as ort from "onnxruntime-web";
import { FaceLandmarker, FilesetResolver } from "@mediapipe/tasks-vision";

import * as blend from "./blend.js";
import * as facesModule from "./faces.js";
import * as geometry from "./geometry.js";
import * as imgproc from "./imgproc.js";
import { restoreFaces, rgbToRgba, rgbaToRgb } from "./pipeline.js";

// deocc_jax.restoration.infer_lib.process_photos / faces.detect.FaceAnalyzer settings.
const MAX_FACES = 4;
const MIN_CONFIDENCE = 0.3;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), fps: $("fps"), info: $("info"), before: $("before"), after: $("after"),
  camera: $("camera"), file: $("file"), drop: $("drop"), video: $("video"),
};

// Everything the tests (and a curious user, from the console) can inspect.
const state = {
  ready: false, error: null, config: null, backend: null, frames: 0, source: null,
  running: false,  // a camera loop is running (it ends after its current frame)
  last: null,  // {width, height, faces: [[x,y]...][], search (faces.js), matrices, blended, ms, source}
  fps: 0,
};
window.deocc = {
  state, geometry, blend, imgproc, restoreFaces, faces: facesModule, finder: null,
  stopCamera: () => stopCamera(),
};

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function fail(message) {
  state.error = message;
  setStatus(message, true);
  console.error(message);
}

// ---------------------------------------------------------------- loading

async function loadConfig() {
  const resp = await fetch("config.json", { cache: "no-store" });
  if (!resp.ok) throw new Error(`config.json: HTTP ${resp.status}`);
  return resp.json();
}

async function wantedProviders() {
  const forced = new URLSearchParams(location.search).get("ep");
  if (forced) return [forced];
  // WebGPU where the browser has a GPU adapter; the WASM CPU backend everywhere.
  let adapter = null;
  try {
    adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
  } catch (e) {
    console.warn(`WebGPU adapter: ${e.message || e}`);
  }
  return adapter ? ["webgpu", "wasm"] : ["wasm"];
}

async function createSession(config) {
  // An absolute URL: onnxruntime-web imports its glue module from there.
  ort.env.wasm.wasmPaths = new URL(config.ort_wasm, location.href).href;
  const providers = await wantedProviders();
  let lastError = null;
  for (const ep of providers) {
    try {
      const session = await ort.InferenceSession.create(config.model.url, {
        executionProviders: [ep], graphOptimizationLevel: "all",
      });
      return { session, backend: ep, skipped: lastError };
    } catch (e) {
      // Say so on the page: a WebGPU failure is shown, never hidden.
      lastError = `${ep}: ${e.message || e}`;
      console.warn(`onnxruntime-web could not use ${lastError}`);
    }
  }
  throw new Error(`onnxruntime-web could not load the model (${lastError})`);
}

async function createLandmarker(config) {
  const fileset = await FilesetResolver.forVisionTasks(
    new URL(config.mediapipe_wasm, location.href).href);
  return FaceLandmarker.createFromOptions(fileset, {
    baseOptions: { modelAssetPath: config.landmarker, delegate: "CPU" },
    runningMode: "IMAGE",
    numFaces: MAX_FACES,
    minFaceDetectionConfidence: MIN_CONFIDENCE,
    minFacePresenceConfidence: MIN_CONFIDENCE,
    minTrackingConfidence: MIN_CONFIDENCE,
  });
}

/**
 * The second stage of face finding (faces.js): the full-range detector and the
 * landmark model on onnxruntime-web's WebAssembly backend (small models, many
 * small runs: faster there than a GPU round trip).
 */
async function createFinder(config) {
  ort.env.wasm.wasmPaths = new URL(config.ort_wasm, location.href).href;
  const f = config.faces;
  const open = (url) => ort.InferenceSession.create(url, {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  const [det, lm] = await Promise.all([open(f.detector.url), open(f.landmarks.url)]);
  const s = f.settings;
  const detRun = async (input) => {
    const out = await det.run({ [f.detector.input]: new ort.Tensor("float32", input,
      [1, s.detector.input_size, s.detector.input_size, 3]) });
    return { regressors: out[f.detector.regressors].data, logits: out[f.detector.scores].data };
  };
  const lmRun = async (input) => {
    const out = await lm.run({ [f.landmarks.input]: new ort.Tensor("float32", input,
      [1, s.mesh.input_size, s.mesh.input_size, 3]) });
    return { landmarks: out[f.landmarks.landmarks].data, presence: out[f.landmarks.presence].data[0] };
  };
  // As detect.FaceAnalyzer in image mode: detections from CONFIRM_SCORE, tiles down to min_face_px.
  const detector = new facesModule.FullRangeDetector(detRun, s.detector,
    { minScore: s.cascade.confirm_score, minFacePx: s.cascade.min_face_px });
  return new facesModule.FaceFinder(detector, new facesModule.FaceMesh(lmRun, s.mesh), s);
}

let session = null, landmarker = null, finder = null, runningMode = "IMAGE";

async function setRunningMode(mode) {
  if (mode !== runningMode) {
    await landmarker.setOptions({ runningMode: mode });
    runningMode = mode;
  }
}

async function runModel(crops, n) {
  const r = state.config.model.resolution;
  const input = new ort.Tensor("uint8", crops, [n, r, r, 3]);
  const out = await session.run({ images: input });
  return { deoccluded: out.deoccluded.data, mask: out.mask.data };
}

// ---------------------------------------------------------------- one frame

const work = document.createElement("canvas");
const workCtx = work.getContext("2d", { willReadFrequently: true });
const beforeCtx = ui.before.getContext("2d", { willReadFrequently: true });
const afterCtx = ui.after.getContext("2d", { willReadFrequently: true });

function sizeCanvases(width, height) {
  for (const c of [work, ui.before, ui.after]) {
    if (c.width !== width || c.height !== height) {
      c.width = width;
      c.height = height;
    }
  }
}

/** Detects, restores and draws one frame; `source` is an ImageBitmap or the video. */
async function processFrame(source, width, height, timestampMs) {
  sizeCanvases(width, height);
  workCtx.drawImage(source, 0, 0, width, height);
  const frame = workCtx.getImageData(0, 0, width, height);
  beforeCtx.putImageData(frame, 0, 0);
  const t0 = performance.now();
  const result = timestampMs === undefined ? landmarker.detect(frame)
    : landmarker.detectForVideo(frame, timestampMs);
  let faces = facesModule.distinctFaces(
    result.faceLandmarks.map((lms) => geometry.pixelLandmarks(lms, width, height)),
    state.config.faces.settings.cascade.same_face_iou);
  const rgb = rgbaToRgb(frame.data, width, height);
  // The Python pipeline's second stage (faces.js): photos searched in full, camera
  // frames with the detector every few frames and its faces tracked in between.
  const search = timestampMs === undefined ? await finder.find(rgb, width, height, faces, MAX_FACES)
    : await finder.findVideo(rgb, width, height, faces, MAX_FACES);
  faces = search.faces.map((f) => f.landmarks);
  const detectMs = performance.now() - t0;
  const restored = await restoreFaces(rgb, width, height, faces, state.config.model.resolution,
    runModel);
  afterCtx.putImageData(new ImageData(rgbToRgba(restored.rgb, width, height), width, height), 0, 0);
  const ms = { detect: detectMs, ...restored.ms, total: performance.now() - t0 };
  state.frames += 1;
  state.last = { width, height, faces, search, matrices: restored.matrices, padding: restored.padding,
    blended: restored.blended, ms, source: state.source, frame: state.frames };
  return state.last;
}

function describe(last) {
  const stages = Object.entries(last.ms).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(", ");
  return `${last.faces.length} face(s); ${stages}`;
}

// ---------------------------------------------------------------- photo

async function processPhoto(file) {
  if (!state.ready) return;
  await stopCamera();
  try {
    // No colour-space conversion: the page sees the file's own bytes, as
    // OpenCV does in the Python path.
    const bitmap = await createImageBitmap(file, {
      colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image",
    });
    await setRunningMode("IMAGE");
    state.source = `photo ${file.name}`;
    setStatus(`restoring ${file.name}…`);
    const last = await processFrame(bitmap, bitmap.width, bitmap.height);
    bitmap.close();
    ui.fps.textContent = "";
    setStatus(last.faces.length ? `${file.name}: ${describe(last)}`
      : `${file.name}: no face found (${last.search.reason}; shown unchanged)`);
  } catch (e) {
    fail(`${file.name}: ${e.message || e}`);
  }
}

ui.file.addEventListener("change", () => {
  if (ui.file.files.length) processPhoto(ui.file.files[0]);
});
for (const ev of ["dragenter", "dragover"]) {
  document.addEventListener(ev, (e) => { e.preventDefault(); ui.drop.classList.add("hover"); });
}
document.addEventListener("dragleave", () => ui.drop.classList.remove("hover"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("hover");
  const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) processPhoto(file);
  else setStatus("drop an image file (PNG, JPEG, WebP…)", true);
});

// ---------------------------------------------------------------- camera

let stream = null, cameraLoop = 0, loopDone = Promise.resolve(), wakeLoop = () => {};

/** Resolves at the camera's next frame (or the next repaint where the browser cannot tell). */
function nextVideoFrame(video) {
  return new Promise((resolve) => {
    wakeLoop = resolve;  // stopCamera() must not wait for a frame that never comes
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(() => resolve());
    else requestAnimationFrame(() => resolve());
  });
}

/** Stops the camera; resolves once the frame being processed has been drawn. */
function stopCamera() {
  cameraLoop += 1;  // ends a running loop
  wakeLoop();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  ui.camera.textContent = "Start camera";
  document.body.classList.remove("camera");
  return loopDone;
}

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    fail("this browser offers no camera here (getUserMedia needs http://127.0.0.1 or https)");
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
    });
  } catch (e) {
    fail(`camera: ${e.message || e}`);
    return;
  }
  await setRunningMode("VIDEO");
  finder.resetVideo();
  ui.video.srcObject = stream;
  await ui.video.play();
  ui.camera.textContent = "Stop camera";
  document.body.classList.add("camera");
  state.source = "camera";
  const loop = ++cameraLoop;
  let finished;
  loopDone = new Promise((resolve) => { finished = resolve; });
  state.running = true;
  state.fps = 0;
  try {
    await cameraFrames(loop);
  } finally {
    state.running = false;
    finished();
  }
}

async function cameraFrames(loop) {
  let lastTs = -1, lastEnd = performance.now();
  setStatus("camera");
  while (loop === cameraLoop) {
    const video = ui.video;
    if (video.readyState >= 2 && video.videoWidth > 0) {
      // MediaPipe's video mode needs strictly increasing timestamps.
      const ts = Math.max(Math.round(performance.now()), lastTs + 1);
      lastTs = ts;
      try {
        const last = await processFrame(video, video.videoWidth, video.videoHeight, ts);
        const now = performance.now();
        const inst = 1000 / Math.max(now - lastEnd, 1e-3);
        lastEnd = now;
        // Exponential average over roughly the last ten frames.
        state.fps = state.fps ? 0.9 * state.fps + 0.1 * inst : inst;
        ui.fps.textContent = `${state.fps.toFixed(1)} frames/s`;
        setStatus(`camera: ${describe(last)}`);
      } catch (e) {
        fail(`camera frame: ${e.message || e}`);
        stopCamera();
        return;
      }
    }
    // Each camera frame is processed once: the rate shown is the rate of new frames out.
    await nextVideoFrame(video);
  }
}

ui.camera.addEventListener("click", () => (stream ? stopCamera() : startCamera()));

// ---------------------------------------------------------------- start

async function main() {
  try {
    setStatus("loading the model and the face landmarker…");
    state.config = await loadConfig();
    const [s, lm, fd] = await Promise.all([createSession(state.config),
      createLandmarker(state.config), createFinder(state.config)]);
    session = s.session;
    landmarker = lm;
    finder = fd;
    window.deocc.finder = fd;
    state.backend = s.backend;
    const m = state.config.model;
    ui.info.textContent = `model ${m.name} (${m.resolution} px) on onnxruntime-web ${ort.env.versions.web} `
      + `${s.backend}${s.skipped ? ` (not ${s.skipped})` : ""}; face landmarks: MediaPipe (CPU) and `
      + "the full-range face detector (onnxruntime-web wasm)";
    state.ready = true;
    ui.camera.disabled = false;
    ui.file.disabled = false;
    setStatus("ready: drop a photo or start the camera");
  } catch (e) {
    fail(`could not start: ${e.message || e}`);
  }
}

main();
