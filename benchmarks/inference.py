r"""Inference speed per runtime: the model call alone and `infer` end to end on a video.

  python -m benchmarks.inference --output=benchmarks/results/inference.json
  python -m benchmarks.inference --config=pix2pix --resolutions=128
  python -m benchmarks.inference --model=pretrained/deocc-128      # a trained model instead of init
  python -m benchmarks.inference --runtimes=jax --e2e=jax           # JAX only, no export

For each resolution (default 128 and 256 px) of --config (default `deocc`; speed depends on the
architecture, not on the weights), it

1. writes a pretrained-format folder holding freshly initialised float32 generator variables
   (`models.init_generator` + `loading.save_pretrained`), unless --model names a trained model
   (a workdir or a pretrained folder; its own resolution);
2. produces the model in every other runtime of --runtimes (`RUNTIMES`; `savedmodel`:
   `export_lib.export_model`, the `deocc_jax.export` path with its self-check on real photos,
   lowered for --platforms) and records how long that took;
3. opens each with `predictors.open_predictor`, the way `infer`, `live` and `evaluate` run a
   model, and times it: latency at batch 1 (median of --latency_repeats) and throughput at batch
   --throughput_batch (median of --throughput_repeats), uint8 in and numpy out, host copies
   included; the first call (compilation / tracing) is reported separately;
4. runs `infer_lib.process_video` (what `python -m deocc_jax.infer` does with a video) with the
   runtimes of --e2e on a 640x480 clip made from a real face photo (--video_frames frames, the
   face panning slowly so the tracker works) and records frames/s and per-stage times.

Adding a runtime (ONNX, LiteRT, a real-time config's model...): add an entry to `RUNTIMES` that
turns the JAX model folder into a path `predictors.open_predictor` opens; every measurement
above then covers it, side by side with the others in one JSON.

Inputs are seeded random uint8 crops: a dense conv net costs the same on any pixels. An
untrained model's predicted mask covers arbitrary parts of the crop, so the blend stage of the
video run does about as much work as it would for a large occluder.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import time
from typing import Any, Callable

import cv2
import jax
import numpy as np
from absl import app, flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from deocc_jax import export_lib, infer_lib, loading, models, predictors  # noqa: E402
from deocc_jax.io import images as image_io  # noqa: E402
from deocc_jax.io import saved_model_runner  # noqa: E402
from deocc_jax.io import video as video_io  # noqa: E402

VIDEO_SIZE = (640, 480)  # width, height


def export_savedmodel(model_dir: str, out_dir: str, args: dict[str, Any]) -> str:
    """The `deocc_jax.export` path (self-check included); the export's version folder."""
    export_lib.export_model(model_dir, out_dir, overwrite=True,
                            landmarker_model=args.get("landmarker"),
                            platforms=tuple(args.get("platforms", ("cpu",))), log=lambda s: None)
    return saved_model_runner.resolve_version_dir(out_dir)


# runtime name -> fn(JAX model folder, output folder for this runtime, args) -> a path that
# predictors.open_predictor opens. "jax" is the model folder itself.
RUNTIMES: dict[str, Callable[[str, str, dict[str, Any]], str]] = {
    "jax": lambda model_dir, out_dir, args: model_dir,
    "savedmodel": export_savedmodel,
}


def define_flags() -> None:
    """The binary's absl flags (defined only when run as a program, so that importing this
    module next to other benchmarks and tests defines no flags)."""
    flags.DEFINE_string("config", "deocc", "configs/<name>.py (or NAME:ARG) whose architecture "
                        "is timed.")
    flags.DEFINE_string("model", None, "A trained model (workdir or pretrained folder) to time "
                        "instead of fresh variables (its own resolution; --resolutions is then "
                        "ignored).")
    flags.DEFINE_list("resolutions", ["128", "256"], "Crop sizes to time.")
    flags.DEFINE_list("runtimes", ["jax", "savedmodel"], f"Runtimes to time: {sorted(RUNTIMES)}.")
    flags.DEFINE_integer("latency_repeats", 20, "Timed batch-1 calls (median).")
    flags.DEFINE_integer("throughput_batch", 32, "Batch size of the throughput figure.")
    flags.DEFINE_integer("throughput_repeats", 3, "Timed large-batch calls (median).")
    flags.DEFINE_list("e2e", ["savedmodel", "jax"],
                      "Runtimes for the end-to-end video run ('' = skip it).")
    flags.DEFINE_integer("video_frames", 60, "Frames of the generated test video.")
    flags.DEFINE_string("photo", os.path.join(common.DEFAULT_PHOTOS, "106.jpg"),
                        "Real face photo the test video is made from.")
    flags.DEFINE_list("platforms", ["cpu"], "Platforms the SavedModel is lowered for.")
    flags.DEFINE_string("scratch_dir", "/tmp/deocc_bench/inference",
                        "Where models, exports and videos are written.")
    flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
    flags.DEFINE_string("output", "", "JSON file to write.")


def init_model_folder(config, directory: str) -> str:
    """A pretrained-format folder with `config`'s freshly initialised float32 generator."""
    shutil.rmtree(directory, ignore_errors=True)
    variables = jax.jit(functools.partial(models.init_generator, config))(
        jax.random.key(config.seed, impl="rbg"))
    loading.save_pretrained(directory, config, variables, 0, name="benchmark-init",
                            dtype="float32")
    return directory


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


def time_predictor(predictor: predictors.Predictor, latency_repeats: int, tp_batch: int,
                   tp_repeats: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Batch-1 latency and large-batch throughput of one model in its runtime.

    Returns:
      {"latency": {...}, "throughput": {...}}, each with first_call_s, median_s, min_s, all_s,
      batch, images_per_s and ms_per_image.
    """
    rng = np.random.default_rng(seed)
    r = predictor.resolution
    out = {}
    for kind, batch, repeats in (("latency", 1, latency_repeats),
                                 ("throughput", tp_batch, tp_repeats)):
        images = rng.integers(0, 256, (batch, r, r, 3), dtype=np.uint8)
        masks = (rng.integers(0, 2, (batch, r, r, 1), dtype=np.uint8) * 255
                 if predictor.guided else None)
        t = _time_calls(lambda: predictor(images, masks), repeats)
        t.update({"batch": batch, "images_per_s": batch / t["median_s"],
                  "ms_per_image": 1e3 * t["median_s"] / batch})
        out[kind] = t
    return out


def make_video(photo: str, path: str, frames: int, fps: float = 30.0) -> str:
    """A 640x480 clip of `photo`, scaled to 90 % of the frame height, panning slowly."""
    image = image_io.read_image(photo)
    w, h = VIDEO_SIZE
    scale = 0.9 * h / image.shape[0]
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    ih, iw = image.shape[:2]
    if iw > w:
        raise ValueError(f"{photo}: too wide for a {w}x{h} frame after scaling to {ih} px high")
    with video_io.VideoWriter(path, fps, w, h) as writer:
        for i in range(frames):
            frame = np.full((h, w, 3), 96, np.uint8)
            x = (w - iw) // 2 + int(round(20 * np.sin(2 * np.pi * i / max(frames, 1))))
            y = (h - ih) // 2
            frame[y:y + ih, x:x + iw] = image
            writer.write(frame)
    return path


def run_video(predictor: predictors.Predictor, video_path: str, output: str,
              landmarker: str | None) -> dict[str, Any]:
    """`infer_lib.process_video` on the clip: frames/s and per-stage milliseconds."""
    t0 = time.perf_counter()
    stats = infer_lib.process_video(predictor, video_path, output, landmarker_model=landmarker,
                                    max_faces=4, log=lambda s: None)
    keep = ("frames", "faces", "fps_source", "fps_processed", "stage_ms")
    return {**{k: stats[k] for k in keep}, "wall_s": time.perf_counter() - t0}


def benchmark_model(model_dir: str, tag: str, scratch: str, args: dict[str, Any],
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of one JAX model folder in every runtime of args["runtimes"]."""
    loaded = loading.load_model(model_dir)
    rec = {"model": os.path.abspath(model_dir), "resolution": int(loaded.config.resolution),
           "mode": loaded.config.model.mode,
           "generator_params": int(sum(x.size for x in jax.tree.leaves(loaded.variables["params"]))),
           "runtimes": {}, "video": {}}
    opened = {}
    for name in args["runtimes"]:
        t0 = time.perf_counter()
        path = RUNTIMES[name](model_dir, os.path.join(scratch, f"{tag}_{name}"), args)
        prepare_s = time.perf_counter() - t0
        opened[name] = predictors.open_predictor(path)
        rt = {"path": os.path.abspath(path), "prepare_s": prepare_s,
              "description": opened[name].description}
        rt.update(time_predictor(opened[name], args["latency_repeats"], args["tp_batch"],
                                 args["tp_repeats"]))
        rec["runtimes"][name] = rt
        log(f"{tag} {name}: batch 1 {1e3 * rt['latency']['median_s']:.1f} ms, "
            f"batch {args['tp_batch']} {rt['throughput']['images_per_s']:.1f} img/s")
    if args["e2e"] and models.is_guided(loaded.config):
        # `infer` runs only blind models on real video (there is no true mask to guide with).
        rec["video_skipped"] = "guided model: infer needs a blind model (no mask in a real video)"
        log(f"{tag}: {rec['video_skipped']}")
    elif args["e2e"]:
        video_path = os.path.join(scratch, f"clip_640x480_{args['video_frames']}.mp4")
        if not os.path.exists(video_path):
            make_video(args["photo"], video_path, args["video_frames"])
        for name in args["e2e"]:
            rec["video"][name] = run_video(opened[name], video_path,
                                           os.path.join(scratch, f"out_{tag}_{name}.mp4"),
                                           args["landmarker"])
        rec["video_input"] = {"photo": os.path.abspath(args["photo"]), "size": list(VIDEO_SIZE),
                              "frames": args["video_frames"]}
    rec["jax_device"] = jax.devices()[0].device_kind
    return rec


def check_args(args: dict[str, Any]) -> None:
    """Clear errors for unknown runtimes before anything is built."""
    for flag in ("runtimes", "e2e"):
        unknown = [r for r in args[flag] if r not in RUNTIMES]
        if unknown:
            raise ValueError(f"--{flag}: unknown runtime(s) {unknown}; known: {sorted(RUNTIMES)}")
    missing = [r for r in args["e2e"] if r not in args["runtimes"]]
    if missing:
        raise ValueError(f"--e2e={','.join(args['e2e'])}: {missing} not in --runtimes")


def run_benchmark(config_spec: str, resolutions: list[int], trained: str | None, scratch: str,
                  args: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Times --config at each resolution (or the trained model); the result record."""
    check_args(args)
    load_start = os.getloadavg()[0]
    os.makedirs(scratch, exist_ok=True)
    rec = {"benchmark": "inference", "config": config_spec if trained is None else None,
           "weights": ("fresh initialisation (speed depends on the architecture only)"
                       if trained is None else f"trained model {os.path.abspath(trained)}"),
           "results": []}
    name, _, arg = config_spec.partition(":")
    for res in ([None] if trained else resolutions):
        if trained:
            model_dir, tag = trained, "trained"
        else:
            tag = f"{name}_{res}"
            model_dir = init_model_folder(common.load_config(name, res, 1, arg=arg or None),
                                          os.path.join(scratch, f"{tag}_model"))
        r = benchmark_model(model_dir, tag, scratch, args, log)
        r["config"] = config_spec if trained is None else "trained"
        rec["results"].append(r)
    rec["machine"] = common.machine_info()
    rec["code"] = common.code_state()
    # Other processes on the same cores slow every figure: compare runs taken at similar load.
    rec["load_average_1m"] = [load_start, os.getloadavg()[0]]
    return rec


def summary_line(rec: dict[str, Any]) -> str:
    parts = []
    for r in rec["results"]:
        s = f"{r['config']} {r['resolution']}px:"
        for name, rt in r["runtimes"].items():
            s += (f" {name} b1 {1e3 * rt['latency']['median_s']:.1f} ms, "
                  f"b{rt['throughput']['batch']} {rt['throughput']['images_per_s']:.1f} img/s;")
        for name, v in r["video"].items():
            s += f" infer video ({name}) {v['fps_processed']:.1f} fps;"
        parts.append(s.rstrip(";"))
    return ("inference: " + "; ".join(parts)
            + f" [{rec['machine']['cpu_model']}, {rec['machine']['cpu_cores_available']} cores]")


def main(argv):
    del argv
    F = flags.FLAGS
    args = {"landmarker": F.landmarker_model, "platforms": F.platforms,
            "runtimes": [r for r in F.runtimes if r], "e2e": [r for r in F.e2e if r],
            "latency_repeats": F.latency_repeats, "tp_batch": F.throughput_batch,
            "tp_repeats": F.throughput_repeats, "photo": F.photo, "video_frames": F.video_frames}
    try:
        check_args(args)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    rec = run_benchmark(F.config, [int(r) for r in F.resolutions], F.model, F.scratch_dir, args)
    rec["command"] = " ".join(["python -m benchmarks.inference"] + sys.argv[1:])
    if F.output:
        common.write_json(F.output, rec)
    print(summary_line(rec))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
