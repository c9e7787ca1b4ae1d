r"""Inference speed and stability of deocc's models, side by side in one run on this CPU.

  python -m benchmarks.inference        # the shipped model -> benchmarks/results/inference.{json,md}
  python -m benchmarks.inference --models=reference=runs/ref,realtime=runs/rt --output=/tmp/x.json
  python -m benchmarks.inference --runtimes=jax --runtime_models= --init_resolutions= --noflicker

One run measures every model of --models (NAME=PATH, JAX model folders: a pretrained folder or a
training workdir; default the shipped model pretrained/deocc-realtime-128; the recorded run adds
the reference model's workdir) and compares each with the --baseline model (default the first):

Issue 11 (live), per model:
  model_stage    the predictor on one real aligned face (the embedded public-domain portraits,
                 `sample_photos`) per call: p50/p95 of --latency_repeats calls, and faces/s at
                 --throughput_batch (`time_predictor`);
  live           `streaming.session.benchmark`: a --clip_size clip (640x480, one face, a face mask
                 pinned to it, `streaming.clips.make_clip` of the first portrait) played in real
                 time at --clip_fps through the 4-thread live pipeline, read by a plain HTTP client
                 from the MJPEG server: output frames/s, capture-to-output latency p50/p95,
                 frames in/out, dropped frames by reason, per-stage ms, the client's frames/s;
  live_capacity  the same pipeline on the same clip without pacing (every frame processed as fast
                 as the stages go): the frame rate the pipeline could sustain;
  infer_video    `infer_lib.process_video` (what `python -m deocc_jax.infer` does with a video) on
                 the same clip with each runtime of --e2e;
  flicker        `streaming.flicker.measure_flicker` on `flicker.standard_clips` (both portraits,
                 still / slow / moving): flicker and masked PSNR per processing variant (per-frame,
                 landmark smoothing, live's temporal stabilisation) and the change against
                 per-frame processing.
Issue 12 (runtimes): `benchmarks.runtimes.benchmark_variables` for each model of
  --runtime_models (its own variables, on real aligned faces) and for a freshly initialised
  --init_config generator at each of --init_resolutions (256 px: no trained model is that size):
  conversion time, file size, difference from JAX, batch-1 latency median/p95 and throughput per
  runtime of --runtimes (JAX, JAX with XLA convolutions, SavedModel, ONNX, LiteRT float32 /
  float16 / dynamic int8), timed in turns.

"comparisons" holds the ratios against the peer measured in the same run (each
{"value", "baseline", "ratio" = value / baseline}): every model against the baseline model,
stabilised (and smoothed) processing against per-frame processing, every runtime against JAX.
"targets" reports issue 11's targets per model (reported, not asserted). Every section records
the 1-minute load average before and after it, and the record holds the machine
(`common.machine_info`): the development machine has 2 cores shared with other jobs, so compare
figures taken at similar load. A Markdown table of the main figures is written beside the JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, runtimes  # noqa: E402
from deocc_jax import errors, infer_lib, loading, models, predictors, sample_photos  # noqa: E402
from deocc_jax.streaming import clips as clips_lib  # noqa: E402
from deocc_jax.streaming import flicker as flicker_lib  # noqa: E402
from deocc_jax.streaming import session  # noqa: E402
from deocc_jax.streaming.tracking import TrackerOptions  # noqa: E402

# Every runtime a model can be timed in: JAX as loaded, then the variants of benchmarks/runtimes.py.
RUNTIMES = ("jax",) + runtimes.VARIANTS
DEFAULT_MODELS = (f"realtime={os.path.join(predictors.PRETRAINED_DIR, predictors.DEFAULT_LIVE_MODEL)}",)
DEFAULT_OUTPUT = os.path.join(common.REPO, "benchmarks", "results", "inference.json")

# Issue 11's targets, reported per model (not asserted): name -> (comparison, limit, meaning).
TARGETS = {
    "model_stage_p50_ms": ("<=", 15.0, "model stage per face (ms, p50)"),
    "live_fps": (">=", 25.0, "live pipeline output frames/s (one face; the clip is in live.clip)"),
    "flicker_reduction": (">=", flicker_lib.TARGET_FLICKER_REDUCTION,
                          "flicker reduction of stabilised vs per-frame processing"),
    "stabilized_psnr_cost_db": ("<=", flicker_lib.TARGET_MAX_PSNR_COST_DB,
                                "masked-PSNR cost of stabilisation (dB)"),
    "mjpeg_client_fps": (">=", 20.0, "frames/s a plain HTTP client reads from the MJPEG stream"),
}


def define_flags() -> None:
    """The binary's absl flags (defined only when run as a program, so that importing this
    module next to other benchmarks and tests defines no flags)."""
    flags.DEFINE_list("models", list(DEFAULT_MODELS),
                      "NAME=PATH,...: JAX models (pretrained folders or training workdirs) to "
                      "measure side by side.")
    flags.DEFINE_string("baseline", "", "The model the others are compared with (default: the "
                        "first of --models).")
    flags.DEFINE_list("runtimes", list(RUNTIMES), f"Runtimes to time: {list(RUNTIMES)}.")
    flags.DEFINE_list("runtime_models", None, "Models of --models timed in every runtime "
                      "(default: all; '' = none).")
    flags.DEFINE_string("init_config", "reference", "configs/<name>.py whose freshly initialised "
                        "generator is also timed in every runtime at --init_resolutions.")
    flags.DEFINE_list("init_resolutions", ["256"], "Resolutions of the --init_config generator "
                      "('' = none).")
    flags.DEFINE_list("e2e", ["jax"], "Runtimes of the `infer` video run ('' = skip it).")
    flags.DEFINE_integer("latency_repeats", 50, "Timed batch-1 calls (p50, p95).")
    flags.DEFINE_integer("throughput_batch", 8, "Batch of the throughput figures (0 = none).")
    flags.DEFINE_integer("throughput_repeats", 3, "Timed calls at --throughput_batch (median).")
    flags.DEFINE_integer("threads", 2, "Threads of onnxruntime and LiteRT (XLA and TensorFlow "
                         "use every core).")
    flags.DEFINE_enum("export_conv_impl", "xla_conv", ["xla_conv", "matmul"],
                      "How the ONNX and LiteRT graphs compute convolutions (same parameters).")
    flags.DEFINE_string("clip_size", "640x480", "WIDTHxHEIGHT of the live clip.")
    flags.DEFINE_float("clip_fps", 30.0, "Frame rate of the live clip (a webcam's).")
    flags.DEFINE_integer("clip_frames", 150, "Frames of the live clip.")
    flags.DEFINE_bool("live_capacity", True, "Also run the live pipeline on the clip unpaced.")
    flags.DEFINE_bool("flicker", True, "Measure flicker and its masked-PSNR cost.")
    flags.DEFINE_integer("flicker_frames", 48, "Frames per flicker clip.")
    flags.DEFINE_string("flicker_size", "320x240", "WIDTHxHEIGHT of the flicker clips.")
    flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
    flags.DEFINE_string("scratch_dir", "/tmp/deocc_bench/inference",
                        "Where clips, exports and videos are written.")
    flags.DEFINE_string("output", DEFAULT_OUTPUT, "JSON file to write ('' = none).")
    flags.DEFINE_string("markdown", None, "Markdown table to write (default: --output with .md).")


# ------------------------------------------------------------------------------------- helpers


def parse_models(specs: list[str]) -> dict[str, str]:
    """NAME=PATH,... -> {name: path}, in order.

    Raises:
      errors.InvalidInputError: a spec without a name or path, or a repeated name.
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path or not name.replace("-", "_").isidentifier():
            raise errors.InvalidInputError(f"--models: {spec!r} is not NAME=PATH (NAME a word)")
        if name in out:
            raise errors.InvalidInputError(f"--models: the name {name!r} is used twice")
        out[name] = path
    if not out:
        raise errors.InvalidInputError("--models: no model given")
    return out


def parse_size(text: str, flag: str) -> tuple[int, int]:
    """"640x480" -> (640, 480)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise errors.InvalidInputError(
            f"--{flag}={text}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 16 or h < 16:
        raise errors.InvalidInputError(f"--{flag}={text}: too small")
    return w, h


def check_args(args: dict[str, Any]) -> None:
    """Clear errors for unknown runtimes before anything is built."""
    for flag in ("runtimes", "e2e"):
        unknown = [r for r in args[flag] if r not in RUNTIMES]
        if unknown:
            raise ValueError(f"--{flag}: unknown runtime(s) {unknown}; known: {list(RUNTIMES)}")
    missing = [r for r in args["e2e"] if r not in args["runtimes"]]
    if missing:
        raise ValueError(f"--e2e={','.join(args['e2e'])}: {missing} not in --runtimes")
    if "jax_xla_conv" in args["e2e"]:
        raise ValueError("--e2e: jax_xla_conv is not a model file `infer` can open; use jax or "
                         "an export")


def ratio(value: float | None, baseline: float | None) -> dict[str, Any]:
    """{"value", "baseline", "ratio" = value / baseline} (ratio None where undefined)."""
    ok = (value is not None and baseline is not None and math.isfinite(value)
          and math.isfinite(baseline) and baseline != 0)
    return {"value": value, "baseline": baseline, "ratio": value / baseline if ok else None}


def _load() -> float:
    return os.getloadavg()[0]


def _timed_section(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs one measurement; adds the 1-minute load before and after it and its wall time."""
    before, t0 = _load(), time.perf_counter()
    rec = fn()
    rec["load_1m"] = {"before": before, "after": _load()}
    rec["section_wall_s"] = time.perf_counter() - t0
    return rec


def time_predictor(predictor: predictors.Predictor, latency_repeats: int, tp_batch: int,
                   tp_repeats: int, seed: int = 0,
                   images: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Batch-1 latency and large-batch throughput of one model in its runtime.

    Args:
      predictor: any Predictor.
      latency_repeats, tp_batch, tp_repeats: timed batch-1 calls; throughput batch and calls.
      seed: for the random inputs.
      images: uint8 [N, R, R, 3] crops to use (the first for batch 1, repeated to fill the
        batch); None = seeded random crops (a dense conv net costs the same on any pixels).

    Returns:
      {"latency": {...}, "throughput": {...}}, each with first_call_s, median_s, min_s, all_s,
      p50_ms, p95_ms, batch, images_per_s and ms_per_image.
    """
    rng = np.random.default_rng(seed)
    r = predictor.resolution
    out = {}
    for kind, batch, repeats in (("latency", 1, latency_repeats),
                                 ("throughput", tp_batch, tp_repeats)):
        if images is None:
            x = rng.integers(0, 256, (batch, r, r, 3), dtype=np.uint8)
        else:
            x = images[np.arange(batch) % len(images)]
        masks = (rng.integers(0, 2, (batch, r, r, 1), dtype=np.uint8) * 255
                 if predictor.guided else None)
        t = _time_calls(lambda: predictor(x, masks), repeats)
        t.update({"batch": batch, "images_per_s": batch / t["median_s"],
                  "ms_per_image": 1e3 * t["median_s"] / batch,
                  "p50_ms": 1e3 * float(np.percentile(t["all_s"], 50)),
                  "p95_ms": 1e3 * float(np.percentile(t["all_s"], 95))})
        out[kind] = t
    return out


def _time_calls(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """First call (compile / trace) separately, then the median of `repeats` calls."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()  # one more untimed call: allocator and thread pools settle
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "median_s": statistics.median(times), "min_s": min(times),
            "all_s": times}


# ------------------------------------------------------------------------------- measurements


def measure_model_stage(predictor, faces: np.ndarray, args: dict[str, Any]) -> dict[str, Any]:
    """The model alone on real aligned faces: per-face latency p50/p95 and faces/s at a batch."""
    t = time_predictor(predictor, args["latency_repeats"], max(args["tp_batch"], 1),
                       args["tp_repeats"], images=faces)
    lat, tp = t["latency"], t["throughput"]
    return {"faces": "real aligned crops of the embedded portraits (sample_photos)",
            "first_call_ms": 1e3 * lat["first_call_s"], "p50_ms": lat["p50_ms"],
            "p95_ms": lat["p95_ms"], "min_ms": 1e3 * lat["min_s"], "repeats": len(lat["all_s"]),
            "all_ms": [1e3 * s for s in lat["all_s"]],
            "throughput": {"batch": tp["batch"], "faces_per_s": tp["images_per_s"],
                           "ms_per_face": tp["ms_per_image"], "repeats": len(tp["all_s"])}}


_LIVE_KEYS = ("mode", "source_fps", "frames_in", "frames_out", "dropped", "dropped_by", "faces",
              "elapsed_s", "fps_out", "latency_ms_p50", "latency_ms_p95", "latency_ms_max",
              "stage_ms", "truncation")


def _live_record(report: dict[str, Any], log: Callable[[str], None], what: str) -> dict[str, Any]:
    rec = {k: report[k] for k in _LIVE_KEYS}
    # The live pipeline's own invariant once a run has ended: every frame in is out or dropped.
    rec["frames_accounted"] = rec["frames_in"] == rec["frames_out"] + rec["dropped"]
    if not rec["frames_accounted"]:
        log(f"WARNING: {what}: frames in {rec['frames_in']} != out {rec['frames_out']} + "
            f"dropped {rec['dropped']}")
    return rec


def measure_live(predictor, clip_path: str, tracker: TrackerOptions,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """`session.benchmark`: the clip in real time through the live pipeline to an MJPEG client."""
    report = session.benchmark(predictor, clip_path, tracker=tracker)
    rec = _live_record(report, log, "live")
    rec["client"] = dict(report["client"])
    return rec


def measure_live_capacity(predictor, clip_path: str, tracker: TrackerOptions,
                          log: Callable[[str], None]) -> dict[str, Any]:
    """The live pipeline on the clip unpaced (lossless): the frame rate its stages sustain."""
    report = session.run(session.LiveOptions(input=clip_path, realtime=False, serve=0, quiet=True,
                                             tracker=tracker),
                         model=predictor, log=lambda s: None)
    return _live_record(report, log, "live capacity")


def measure_infer_video(predictor, clip_path: str, output: str,
                        landmarker: str | None) -> dict[str, Any]:
    """`infer_lib.process_video` on the clip: frames/s and per-stage milliseconds."""
    if os.path.exists(output):
        os.remove(output)  # a previous run's; infer refuses to overwrite
    t0 = time.perf_counter()
    stats = infer_lib.process_video(predictor, clip_path, output, landmarker_model=landmarker,
                                    log=lambda s: None)
    return {"model": predictor.description, "frames": stats["frames"],
            "faces": stats.get("faces"), "fps_source": stats["fps_source"],
            "fps_processed": stats["fps_processed"], "stage_ms": stats["stage_ms"],
            "wall_s": time.perf_counter() - t0}


def flicker_variants(landmarker: str | None):
    """flicker.VARIANTS with an explicit landmarker model, when one is given."""
    if landmarker is None:
        return dict(flicker_lib.VARIANTS)
    return {name: (dataclasses.replace(t, landmarker_model=landmarker), s)
            for name, (t, s) in flicker_lib.VARIANTS.items()}


def init_generator(config_name: str, resolution: int):
    """(config, fresh float32 generator variables) of configs/<name>.py at `resolution`."""
    config = common.load_config(config_name, resolution, 1)
    variables = jax.jit(functools.partial(models.init_generator, config))(
        jax.random.key(config.seed, impl="rbg"))
    return config, variables


# ------------------------------------------------------------------------------- the benchmark


def run_benchmark(model_paths: dict[str, str], args: dict[str, Any],
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of the module docstring, in one process; the result record.

    Args:
      model_paths: name -> JAX model folder (pretrained folder or workdir), in order.
      args: the settings (see `main` for the keys).
      log: progress lines.

    Returns:
      {"benchmark", "baseline", "settings", "models": {name: ...}, "runtimes": [...],
      "comparisons", "targets", "machine", "code", "load_average_1m", "wall_s"}.
    """
    check_args(args)
    baseline = args.get("baseline") or next(iter(model_paths))
    if baseline not in model_paths:
        raise errors.InvalidInputError(f"--baseline={baseline}: not one of --models "
                                       f"({', '.join(model_paths)})")
    runtime_models = args.get("runtime_models")
    runtime_models = list(model_paths) if runtime_models is None else runtime_models
    unknown = [m for m in runtime_models if m not in model_paths]
    if unknown:
        raise errors.InvalidInputError(f"--runtime_models: {unknown} not in --models")
    exported_e2e = [r for r in args["e2e"] if r != "jax"]
    if exported_e2e and set(runtime_models) != set(model_paths):
        raise errors.InvalidInputError(
            f"--e2e={','.join(args['e2e'])}: the exported runtimes come from the runtime section; "
            "put every model in --runtime_models")
    for name, path in model_paths.items():
        if not os.path.isdir(path):
            raise errors.InputNotFoundError(
                f"--models {name}={path}: no such model folder (train and ship it, or pass "
                "--models=NAME=PATH,... with JAX model folders: pretrained folders or workdirs)")
    start_load, t_start = _load(), time.perf_counter()
    scratch = args["scratch_dir"]
    os.makedirs(scratch, exist_ok=True)
    landmarker = args.get("landmarker")
    tracker = TrackerOptions(landmarker_model=landmarker)

    # Every model loaded up front: a bad path fails before minutes of measuring.
    loaded = {name: loading.load_model(path) for name, path in model_paths.items()}
    preds = {name: predictors.JaxPredictor(m) for name, m in loaded.items()}
    photos = sample_photos.face_photo_paths()
    faces_at: dict[int, np.ndarray] = {}

    def faces(resolution: int) -> np.ndarray:
        if resolution not in faces_at:
            faces_at[resolution] = sample_photos.aligned_faces(photos, resolution, landmarker)
        return faces_at[resolution]

    rec: dict[str, Any] = {
        "benchmark": "inference", "baseline": baseline,
        "settings": {k: v for k, v in args.items() if k != "log"},
        "models": {}, "runtimes": []}

    # Issue 12: every runtime, in turns, per model and per fresh generator.
    variants = [r for r in args["runtimes"] if r != "jax"]
    rt_kwargs = dict(latency_repeats=args["latency_repeats"], throughput_batch=args["tp_batch"],
                     throughput_repeats=args["tp_repeats"], threads=args["threads"],
                     export_conv_impl=args["export_conv_impl"],
                     scratch_dir=os.path.join(scratch, "runtimes"), log=log)
    if "jax" in args["runtimes"] or variants:
        for name in runtime_models:
            m = loaded[name]
            row = _timed_section(lambda: runtimes.benchmark_variables(
                m.config, m.variables, variants, tag=name, images=faces(int(m.config.resolution)),
                **rt_kwargs))
            rec["runtimes"].append({"key": f"{name}@{row['resolution']}", "model": name,
                                    "weights": f"trained: {os.path.abspath(model_paths[name])}", **row})
        for res in args["init_resolutions"]:
            config, variables = init_generator(args["init_config"], res)
            row = _timed_section(lambda: runtimes.benchmark_variables(
                config, variables, variants, tag=f"init_{args['init_config']}_{res}",
                images=faces(res), **rt_kwargs))
            rec["runtimes"].append({"key": f"init:{args['init_config']}@{res}", "model": None,
                                    "config": args["init_config"],
                                    "weights": "fresh initialisation (speed depends on the "
                                               "architecture only)", **row})

    # Issue 11: the live clip (one face, 640x480 at a webcam's rate) and the flicker clips.
    w, h = args["clip_size"]
    clip_path = os.path.join(scratch, f"live_clip_{w}x{h}_{args['clip_fps']:g}fps_"
                                      f"{args['clip_frames']}.mp4")
    live_clip = clips_lib.make_clip(photos[0], frames=args["clip_frames"], size=(w, h),
                                    fps=args["clip_fps"], landmarker_model=landmarker)
    clips_lib.write_clip(live_clip, clip_path)
    clip_info = {"path": clip_path, "photo": os.path.basename(photos[0]), "size": [w, h],
                 "fps": args["clip_fps"], "frames": args["clip_frames"], "faces": 1,
                 "motion": live_clip.motion}
    flicker_clips = []
    if args["flicker"]:
        fw, fh = args["flicker_size"]
        flicker_clips = flicker_lib.standard_clips(photos, frames=args["flicker_frames"],
                                                   size=(fw, fh), landmarker_model=landmarker)

    for name, pred in preds.items():
        m = loaded[name]
        entry: dict[str, Any] = {
            "path": os.path.abspath(model_paths[name]), "description": pred.description,
            "resolution": pred.resolution, "mode": m.config.model.mode, "step": m.step,
            "generator_params": int(sum(x.size for x in jax.tree.leaves(m.variables["params"])))}
        log(f"{name}: {pred.description}, {entry['generator_params']:,} generator parameters")
        entry["model_stage"] = _timed_section(
            lambda: measure_model_stage(pred, faces(pred.resolution), args))
        log(f"{name}: model stage p50 {entry['model_stage']['p50_ms']:.1f} ms, "
            f"p95 {entry['model_stage']['p95_ms']:.1f} ms per face")
        if pred.guided:
            # Live and `infer` run blind models on real video (there is no true mask to guide with).
            entry["live_skipped"] = "guided model: the live path needs a blind model"
            log(f"{name}: {entry['live_skipped']}")
        else:
            entry["live"] = _timed_section(lambda: measure_live(pred, clip_path, tracker, log))
            entry["live"]["clip"] = clip_info
            lv = entry["live"]
            log(f"{name}: live {lv['fps_out']:.1f} frames/s, latency p50 {lv['latency_ms_p50']:.0f} "
                f"/ p95 {lv['latency_ms_p95']:.0f} ms, dropped {lv['dropped_by']}, MJPEG client "
                f"{lv['client'].get('fps', 0):.1f} frames/s")
            if args["live_capacity"]:
                entry["live_capacity"] = _timed_section(
                    lambda: measure_live_capacity(pred, clip_path, tracker, log))
                log(f"{name}: live pipeline unpaced {entry['live_capacity']['fps_out']:.1f} frames/s")
            entry["infer_video"] = {}
            for rt in args["e2e"]:
                if rt == "jax":
                    p = pred
                else:
                    # The export the runtime section made of this model (checked in check_args).
                    row = next(r for r in rec["runtimes"] if r["model"] == name)
                    p = predictors.open_predictor(row[rt]["path"])
                out = os.path.join(scratch, f"infer_{name}_{rt}.mp4")
                entry["infer_video"][rt] = _timed_section(
                    functools.partial(measure_infer_video, p, clip_path, out, landmarker))
                log(f"{name}: infer video ({rt}) {entry['infer_video'][rt]['fps_processed']:.1f} "
                    "frames/s")
        if flicker_clips:
            entry["flicker"] = _timed_section(lambda: flicker_lib.measure_flicker(
                pred, flicker_clips, flicker_variants(landmarker)))
            fl = entry["flicker"]
            log(f"{name}: flicker " + ", ".join(
                f"{v} {fl['variants'][v]['flicker']:.2f} ({fl['variants'][v]['masked_psnr']:.2f} dB)"
                for v in fl["variants"]))
        rec["models"][name] = entry

    rec["comparisons"] = comparisons(rec)
    rec["targets"] = targets(rec)
    rec["machine"] = common.machine_info()
    rec["code"] = common.code_state()
    # Other processes on the same cores slow every figure: compare runs taken at similar load.
    rec["load_average_1m"] = {"start": start_load, "end": _load()}
    rec["wall_s"] = time.perf_counter() - t_start
    return rec


# ------------------------------------------------------------------------- comparisons, targets


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


# name in "comparisons" -> path in a model's record
MODEL_FIGURES = {
    "model_stage_p50_ms": ("model_stage", "p50_ms"),
    "model_stage_p95_ms": ("model_stage", "p95_ms"),
    "model_stage_faces_per_s": ("model_stage", "throughput", "faces_per_s"),
    "live_fps": ("live", "fps_out"),
    "live_latency_p50_ms": ("live", "latency_ms_p50"),
    "live_latency_p95_ms": ("live", "latency_ms_p95"),
    "live_dropped": ("live", "dropped"),
    "mjpeg_client_fps": ("live", "client", "fps"),
    "live_capacity_fps": ("live_capacity", "fps_out"),
    "infer_video_fps_jax": ("infer_video", "jax", "fps_processed"),
}


def comparisons(rec: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the peer measured in the same run (see the module docstring)."""
    base_name = rec["baseline"]
    base = rec["models"][base_name]
    out: dict[str, Any] = {"models_vs_baseline": {}, "stabilized_vs_per_frame": {},
                           "runtimes_vs_jax": {}}
    for name, m in rec["models"].items():
        if name != base_name:
            c = {k: ratio(_get(m, *p), _get(base, *p)) for k, p in MODEL_FIGURES.items()}
            for v in (_get(m, "flicker", "variants") or {}):
                c[f"flicker_{v}"] = ratio(_get(m, "flicker", "variants", v, "flicker"),
                                          _get(base, "flicker", "variants", v, "flicker"))
                psnr = ratio(_get(m, "flicker", "variants", v, "masked_psnr"),
                             _get(base, "flicker", "variants", v, "masked_psnr"))
                psnr["diff_db"] = (psnr["value"] - psnr["baseline"]
                                   if psnr["ratio"] is not None else None)
                c[f"masked_psnr_{v}"] = psnr
            out["models_vs_baseline"][name] = c
        variants = _get(m, "flicker", "variants") or {}
        if "per_frame" in variants:
            pf = variants["per_frame"]
            per = {}
            for v, fv in variants.items():
                if v == "per_frame":
                    continue
                f = ratio(fv["flicker"], pf["flicker"])
                per[v] = {"flicker": f,
                          "flicker_reduction": 1.0 - f["ratio"] if f["ratio"] is not None else None,
                          "masked_psnr": {"value": fv["masked_psnr"], "baseline": pf["masked_psnr"]},
                          "masked_psnr_cost_db": pf["masked_psnr"] - fv["masked_psnr"]}
            out["stabilized_vs_per_frame"][name] = per
    for row in rec["runtimes"]:
        jx = row.get("jax", {})
        per = {}
        for rt in RUNTIMES:
            if rt == "jax" or rt not in row:
                continue
            per[rt] = {"latency_median_ms": ratio(row[rt]["median_ms"], jx.get("median_ms")),
                       "latency_p95_ms": ratio(row[rt]["p95_ms"], jx.get("p95_ms"))}
            if "throughput" in row[rt]:
                per[rt]["throughput_images_per_s"] = ratio(row[rt]["throughput"]["images_per_s"],
                                                           _get(jx, "throughput", "images_per_s"))
        out["runtimes_vs_jax"][row["key"]] = per
    return out


def targets(rec: dict[str, Any]) -> dict[str, Any]:
    """Issue 11's targets per model: {"value", "op", "target", "met", "what"} (None: not measured)."""
    out = {}
    for name, m in rec["models"].items():
        stab = _get(rec, "comparisons", "stabilized_vs_per_frame", name, "stabilized") or {}
        values = {"model_stage_p50_ms": _get(m, "model_stage", "p50_ms"),
                  "live_fps": _get(m, "live", "fps_out"),
                  "flicker_reduction": stab.get("flicker_reduction"),
                  "stabilized_psnr_cost_db": stab.get("masked_psnr_cost_db"),
                  "mjpeg_client_fps": _get(m, "live", "client", "fps")}
        per = {}
        for key, (op, limit, what) in TARGETS.items():
            v = values[key]
            met = (None if v is None or not math.isfinite(v)
                   else bool(v <= limit if op == "<=" else v >= limit))
            per[key] = {"value": v, "op": op, "target": limit, "met": met, "what": what}
        out[name] = per
    return out


# ------------------------------------------------------------------------------------ reports


def _f(v: Any, fmt: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def markdown_report(rec: dict[str, Any]) -> str:
    """The main figures as Markdown tables (models side by side; runtimes against JAX)."""
    mach = rec["machine"]
    names = list(rec["models"])
    lines = [f"# Inference benchmark: {', '.join(names)} (baseline {rec['baseline']})", "",
             f"`{rec.get('command', 'python -m benchmarks.inference')}` on {mach['cpu_model']}, "
             f"{mach['cpu_cores_available']} cores, jax {mach['jax_version']}; 1-minute load "
             f"{_f(rec['load_average_1m']['start'])} at the start, "
             f"{_f(rec['load_average_1m']['end'])} at the end (a shared machine: compare figures taken at similar load); git "
             f"{rec['code']['git_head'][:10]}.", "",
             "## Models (issue 11)", "",
             "| | " + " | ".join(names) + " | target |",
             "|---|" + "---:|" * len(names) + "---|"]

    def row(label, cell, target=""):
        lines.append(f"| {label} | " + " | ".join(cell(n, rec["models"][n]) for n in names)
                     + f" | {target} |")

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f} %"

    stab = rec["comparisons"]["stabilized_vs_per_frame"]
    row("generator parameters", lambda n, m: f"{m['generator_params']:,}")
    row("model stage per face, p50 / p95 (ms)",
        lambda n, m: f"{_f(_get(m, 'model_stage', 'p50_ms'))} / "
                     f"{_f(_get(m, 'model_stage', 'p95_ms'))}",
        "p50 <= 15")
    row(f"model stage at batch {rec['settings']['tp_batch']} (faces/s)",
        lambda n, m: _f(_get(m, "model_stage", "throughput", "faces_per_s")))
    clip = next((m["live"]["clip"] for m in rec["models"].values() if "live" in m), None)
    where = f" ({clip['size'][0]}x{clip['size'][1]}, {clip['fps']:g} fps source)" if clip else ""
    row(f"live pipeline, frames/s out{where}", lambda n, m: _f(_get(m, "live", "fps_out")), ">= 25")
    row("capture-to-output latency p50 / p95 (ms)",
        lambda n, m: f"{_f(_get(m, 'live', 'latency_ms_p50'), '.0f')} / "
                     f"{_f(_get(m, 'live', 'latency_ms_p95'), '.0f')}")
    row("frames in / out / dropped (by reason)",
        lambda n, m: "–" if "live" not in m else
        f"{m['live']['frames_in']} / {m['live']['frames_out']} / {m['live']['dropped']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(m["live"]["dropped_by"].items())) + ")"
           if m["live"]["dropped_by"] else ""))
    row("MJPEG client, frames/s read", lambda n, m: _f(_get(m, "live", "client", "fps")), ">= 20")
    row("live pipeline unpaced, frames/s", lambda n, m: _f(_get(m, "live_capacity", "fps_out")))
    row("`infer` on the clip (JAX), frames/s",
        lambda n, m: _f(_get(m, "infer_video", "jax", "fps_processed")))
    row("flicker per-frame / stabilised (grey levels)",
        lambda n, m: f"{_f(_get(m, 'flicker', 'variants', 'per_frame', 'flicker'), '.2f')} / "
                     f"{_f(_get(m, 'flicker', 'variants', 'stabilized', 'flicker'), '.2f')}")
    row("flicker reduction by stabilisation",
        lambda n, m: pct(_get(stab, n, "stabilized", "flicker_reduction")), ">= 30 %")
    row("masked PSNR per-frame / stabilised (dB)",
        lambda n, m: f"{_f(_get(m, 'flicker', 'variants', 'per_frame', 'masked_psnr'), '.2f')} / "
                     f"{_f(_get(m, 'flicker', 'variants', 'stabilized', 'masked_psnr'), '.2f')}")
    row("masked-PSNR cost of stabilisation (dB)",
        lambda n, m: _f(_get(stab, n, "stabilized", "masked_psnr_cost_db"), ".2f"), "<= 0.3")

    if rec["runtimes"]:
        lines += ["", "## Runtimes (issue 12)", "",
                  "Batch-1 latency and throughput in turns on the same inputs; `vs JAX` = "
                  "median latency / JAX's.", "",
                  "| model @ px | runtime | convert s | MB | max diff | b1 median / p95 ms | "
                  f"img/s at batch {rec['settings']['tp_batch']} | latency vs JAX |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rec["runtimes"]:
            vs = rec["comparisons"]["runtimes_vs_jax"][r["key"]]
            for rt in RUNTIMES:
                if rt not in r:
                    continue
                x = r[rt]
                lines.append(
                    f"| {r['key']} | {rt} | {_f(x.get('convert_s'))} | {_f(x.get('file_mb'))} | "
                    f"{x.get('max_abs_diff_vs_jax', '–')} | "
                    f"{_f(x['median_ms'])} / {_f(x['p95_ms'])} | "
                    f"{_f(_get(x, 'throughput', 'images_per_s'))} | "
                    f"{_f(_get(vs, rt, 'latency_median_ms', 'ratio'), '.2f')} |")
    return "\n".join(lines) + "\n"


def summary_line(rec: dict[str, Any]) -> str:
    parts = []
    for name, m in rec["models"].items():
        s = f"{name}: model {_f(_get(m, 'model_stage', 'p50_ms'))} ms/face"
        if "live" in m:
            s += (f", live {_f(m['live']['fps_out'])} fps "
                  f"(p95 {_f(m['live']['latency_ms_p95'], '.0f')} ms, "
                  f"client {_f(_get(m, 'live', 'client', 'fps'))} fps)")
        parts.append(s)
    return ("inference: " + "; ".join(parts)
            + f" [{rec['machine']['cpu_model']}, {rec['machine']['cpu_cores_available']} cores, "
              f"load {_f(rec['load_average_1m']['start'])}]")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    F = flags.FLAGS
    args = {"runtimes": [r for r in F.runtimes if r], "e2e": [r for r in F.e2e if r],
            "runtime_models": None if F.runtime_models is None else [m for m in F.runtime_models if m],
            "baseline": F.baseline, "init_config": F.init_config,
            "init_resolutions": [int(r) for r in F.init_resolutions if r],
            "latency_repeats": F.latency_repeats, "tp_batch": F.throughput_batch,
            "tp_repeats": F.throughput_repeats, "threads": F.threads,
            "export_conv_impl": F.export_conv_impl,
            "clip_size": parse_size(F.clip_size, "clip_size"), "clip_fps": F.clip_fps,
            "clip_frames": F.clip_frames, "live_capacity": F.live_capacity, "flicker": F.flicker,
            "flicker_frames": F.flicker_frames,
            "flicker_size": parse_size(F.flicker_size, "flicker_size"),
            "landmarker": F.landmarker_model, "scratch_dir": F.scratch_dir}
    try:
        check_args(args)
    except ValueError as e:
        raise errors.InvalidInputError(str(e)) from None
    rec = run_benchmark(parse_models(F.models), args)
    rec["command"] = " ".join(["python -m benchmarks.inference"] + sys.argv[1:])
    if F.output:
        common.write_json(F.output, rec)
        md = F.markdown or os.path.splitext(F.output)[0] + ".md"
        with open(md, "w") as f:
            f.write(markdown_report(rec))
        print(f"wrote {F.output} and {md}")
    elif F.markdown:
        with open(F.markdown, "w") as f:
            f.write(markdown_report(rec))
    print(summary_line(rec))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    errors.run(main)
