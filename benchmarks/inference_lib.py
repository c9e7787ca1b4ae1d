"""Inference speed and stability of deocc's models: the measurements and the benchmark run.

The library of `python -m benchmarks.inference`, whose docstring says what each section measures;
`benchmarks/inference_report.py` turns the record into comparisons, targets and tables.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import common, inference_report, runtimes_lib
from deocc_jax import errors, models
from deocc_jax.artifacts import loading, predictors
from deocc_jax.faces import sample_photos
from deocc_jax.restoration import infer_lib
from deocc_jax.streaming import clips as clips_lib
from deocc_jax.streaming import flicker as flicker_lib
from deocc_jax.streaming import session
from deocc_jax.streaming.tracking import TrackerOptions


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
        unknown = [r for r in args[flag] if r not in runtimes_lib.RUNTIMES]
        if unknown:
            raise ValueError(f"--{flag}: unknown runtime(s) {unknown}; "
                             f"known: {list(runtimes_lib.RUNTIMES)}")
    missing = [r for r in args["e2e"] if r not in args["runtimes"]]
    if missing:
        raise ValueError(f"--e2e={','.join(args['e2e'])}: {missing} not in --runtimes")
    if "jax_xla_conv" in args["e2e"]:
        raise ValueError("--e2e: jax_xla_conv is not a model file `infer` can open; use jax or "
                         "an export")


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
    """Every measurement `python -m benchmarks.inference` describes, in one process; the record.

    Args:
      model_paths: name -> JAX model folder (pretrained folder or workdir), in order.
      args: the settings (`benchmarks/inference.py`'s `main` lists the keys).
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

    # Every runtime, in turns, per model and per fresh generator.
    variants = [r for r in args["runtimes"] if r != "jax"]
    rt_kwargs = dict(latency_repeats=args["latency_repeats"], throughput_batch=args["tp_batch"],
                     throughput_repeats=args["tp_repeats"], threads=args["threads"],
                     export_conv_impl=args["export_conv_impl"],
                     scratch_dir=os.path.join(scratch, "runtimes"), log=log)
    if "jax" in args["runtimes"] or variants:
        for name in runtime_models:
            m = loaded[name]
            row = _timed_section(lambda: runtimes_lib.benchmark_variables(
                m.config, m.variables, variants, tag=name, images=faces(int(m.config.resolution)),
                **rt_kwargs))
            rec["runtimes"].append({"key": f"{name}@{row['resolution']}", "model": name,
                                    "weights": f"trained: {os.path.abspath(model_paths[name])}", **row})
        for res in args["init_resolutions"]:
            config, variables = init_generator(args["init_config"], res)
            row = _timed_section(lambda: runtimes_lib.benchmark_variables(
                config, variables, variants, tag=f"init_{args['init_config']}_{res}",
                images=faces(res), **rt_kwargs))
            rec["runtimes"].append({"key": f"init:{args['init_config']}@{res}", "model": None,
                                    "config": args["init_config"],
                                    "weights": "fresh initialisation (speed depends on the "
                                               "architecture only)", **row})

    # The live clip (one face, 640x480 at a webcam's rate) and the flicker clips.
    w, h = args["clip_size"]
    clip_path = os.path.join(scratch, f"live_clip_{w}x{h}_{args['clip_fps']:g}fps_"
                                      f"{args['clip_frames']}.mp4")
    live_clip = clips_lib.make_clip(photos[0], frames=args["clip_frames"], size=(w, h),
                                    fps=args["clip_fps"], landmarker_model=landmarker)
    clips_lib.write_clip(live_clip, clip_path, overwrite=True)  # the benchmark's own scratch clip
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

    rec["comparisons"] = inference_report.comparisons(rec)
    rec["targets"] = inference_report.targets(rec)
    rec["machine"] = common.machine_info()
    rec["code"] = common.code_state()
    # Other processes on the same cores slow every figure: compare runs taken at similar load.
    rec["load_average_1m"] = {"start": start_load, "end": _load()}
    rec["wall_s"] = time.perf_counter() - t_start
    return rec
