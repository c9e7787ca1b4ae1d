r"""Inference speed: SavedModel (TensorFlow) and jitted JAX, and `infer` end to end on a video.

  python -m benchmarks.inference --output=benchmarks/results/inference.json
  python -m benchmarks.inference --config=pix2pix --resolutions=128
  python -m benchmarks.inference --workdir=runs/deocc        # a trained run instead of init

For each resolution (default 128 and 256 px) of --config (default `deocc`; speed depends on the
architecture, not on the weights), it

1. writes a workdir holding freshly initialised train state through the project's own
   checkpointer (`train_lib.build_setup(...).init()` + `checkpointing.Checkpointer.save`), unless
   --workdir names a trained run;
2. exports it with `export_lib.export_workdir` (the `deocc_jax.export` path, self-check on real
   photos included; lowered for --platforms, default cpu) and records how long that took;
3. times the jitted JAX model (`inference.make_predict_fn`) and the SavedModel
   (`export_lib.SavedModelRunner`, TF's serving signature): latency at batch 1 (median of
   --latency_repeats) and throughput at batch --throughput_batch (default 32), uint8 in and out,
   host copies included; the first call (compilation / tracing) is reported separately;
4. runs `infer_lib.run` (what `python -m deocc_jax.infer` calls) on a 640x480 video made from a
   real face photo (--video_frames frames, the face panning slowly so the tracker works), once
   with the SavedModel and once with the JAX workdir, and records frames/s and per-stage times.

Inputs are seeded random uint8 crops: a dense conv net costs the same on any pixels. The
untrained model's predicted mask covers arbitrary parts of the crop, so the blend stage of the
video run does about as much work as it would for a large occluder.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def define_flags() -> None:
    """The binary's absl flags (defined only when run as a program, so that importing this
    module next to other benchmarks and tests defines no flags)."""
    flags.DEFINE_string("config", "deocc", "configs/<name>.py whose architecture is timed.")
    flags.DEFINE_string("workdir", None, "A trained workdir to time instead of fresh "
        "variables (its own resolution; --resolutions is then ignored).")
    flags.DEFINE_list("resolutions", ["128", "256"], "Crop sizes to time.")
    flags.DEFINE_integer("latency_repeats", 20, "Timed batch-1 calls (median).")
    flags.DEFINE_integer("throughput_batch", 32, "Batch size of the throughput figure.")
    flags.DEFINE_integer("throughput_repeats", 3, "Timed large-batch calls (median).")
    flags.DEFINE_integer("video_frames", 60, "Frames of the generated test video.")
    flags.DEFINE_string("photo", os.path.join(common.DEFAULT_PHOTOS, "106.jpg"),
        "Real face photo the test video is made from.")
    flags.DEFINE_list("platforms", ["cpu"], "Platforms the SavedModel is lowered for.")
    flags.DEFINE_string("scratch_dir", "/tmp/deocc_bench/inference",
        "Where workdirs, exports and videos are written.")
    flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
    flags.DEFINE_bool("savedmodel", True, "Also export and time the SavedModel (--nosavedmodel: "
        "JAX only).")
    flags.DEFINE_list("e2e", ["savedmodel", "jax"],
        "Backends for the end-to-end video run ('' = skip it).")
    flags.DEFINE_string("output", "", "JSON file to write.")

VIDEO_SIZE = (640, 480)  # width, height


def init_workdir(config, workdir: str) -> str:
    """A workdir whose checkpoint 0 is `config`'s freshly initialised train state."""
    import shutil

    from deocc_jax import checkpointing, train_lib

    shutil.rmtree(workdir, ignore_errors=True)
    setup = train_lib.build_setup(config)
    state = setup.init()
    ckpt = checkpointing.Checkpointer(workdir, async_save=False)
    try:
        ckpt.save(0, train_lib.state_items(state), data_state=None, config=config)
        ckpt.wait()
    finally:
        ckpt.close()
    return workdir


def _time_calls(fn, repeats: int) -> dict[str, float]:
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


def time_model_calls(workdir: str, export_dir: str | None, resolution: int, latency_repeats: int,
                     tp_batch: int, tp_repeats: int) -> dict:
    """Batch-1 latency and large-batch throughput of the JAX and (given an export) SavedModel."""
    import jax
    import numpy as np

    from deocc_jax import export_lib, inference

    config, variables = inference.load_model(workdir)
    predict = inference.make_predict_fn(config)
    runner = export_lib.SavedModelRunner(export_dir) if export_dir else None
    rng = np.random.default_rng(0)
    out = {}
    for batch, repeats, kind in ((1, latency_repeats, "latency"), (tp_batch, tp_repeats, "throughput")):
        images = rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8)
        calls = {
            # np.asarray: the caller gets host pixels, as from the SavedModel.
            "jax": lambda: {k: np.asarray(v) for k, v in predict(variables, images).items()},
        }
        if runner is not None:
            calls["savedmodel"] = lambda: runner(images)
        for name, fn in calls.items():
            t = _time_calls(fn, repeats)
            t.update({"batch": batch, "images_per_s": batch / t["median_s"],
                      "ms_per_image": 1e3 * t["median_s"] / batch})
            out[f"{name}_{kind}"] = t
    out["jax_device"] = jax.devices()[0].device_kind
    return out


def make_video(photo: str, path: str, frames: int, fps: float = 30.0) -> str:
    """A 640x480 clip of `photo`, scaled to 90 % of the frame height, panning slowly."""
    import cv2
    import numpy as np

    from deocc_jax import infer_lib, video

    image = infer_lib.read_rgb(photo)
    w, h = VIDEO_SIZE
    scale = 0.9 * h / image.shape[0]
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    ih, iw = image.shape[:2]
    if iw > w:
        raise ValueError(f"{photo}: too wide for a {w}x{h} frame after scaling to {ih} px high")
    with video.VideoWriter(path, fps, w, h) as writer:
        for i in range(frames):
            frame = np.full((h, w, 3), 96, np.uint8)
            x = (w - iw) // 2 + int(round(20 * np.sin(2 * np.pi * i / max(frames, 1))))
            y = (h - ih) // 2
            frame[y:y + ih, x:x + iw] = image
            writer.write(frame)
    return path


def run_video(model_path: str, video_path: str, output: str, landmarker: str | None) -> dict:
    """`infer_lib.run` on the clip: frames/s after warm-up and per-stage milliseconds."""
    from deocc_jax import infer_lib

    t0 = time.perf_counter()
    stats = infer_lib.run(model_path, video_path, output, landmarker_model=landmarker,
                          max_faces=4)
    stats["wall_s_including_load"] = time.perf_counter() - t0
    return stats


def benchmark_resolution(config_name: str, resolution: int | None, trained_workdir: str | None,
                         scratch: str, args: dict) -> dict:
    """Every measurement for one model at one resolution."""
    from deocc_jax import export_lib, inference

    tag = f"{config_name}_{resolution}" if trained_workdir is None else "trained"
    if trained_workdir is None:
        config = common.load_config(config_name, resolution, batch_size=1)
        t0 = time.perf_counter()
        workdir = init_workdir(config, os.path.join(scratch, f"workdir_{tag}"))
        init_s = time.perf_counter() - t0
        weights = "fresh initialisation (speed depends on the architecture only)"
    else:
        workdir, init_s = trained_workdir, None
        config, _ = inference.load_model(workdir)
        resolution = int(config.resolution)
        weights = f"trained workdir {os.path.abspath(workdir)}"
    rec = {"config": config_name if trained_workdir is None else "trained", "resolution": resolution,
           "weights": weights, "init_workdir_s": init_s, "generator_params": _count_params(workdir)}
    export_base = export_dir = None
    if args["savedmodel"]:
        export_base = os.path.join(scratch, f"export_{tag}")
        t0 = time.perf_counter()
        meta = export_lib.export_workdir(workdir, export_base, overwrite=True,
                                         landmarker_model=args["landmarker"],
                                         platforms=tuple(args["platforms"]), log=lambda s: None)
        rec.update({"export_s": time.perf_counter() - t0,
                    "export_platforms": list(args["platforms"]),
                    "export_self_check": meta.get("self_check", {}).get("batches")})
        export_dir = export_lib.resolve_version_dir(export_base)
    rec.update(time_model_calls(workdir, export_dir, resolution, args["latency_repeats"],
                                args["tp_batch"], args["tp_repeats"]))
    rec["video"] = {}
    if args["e2e"]:
        video_path = os.path.join(scratch, "clip_640x480.mp4")
        if not os.path.exists(video_path):
            make_video(args["photo"], video_path, args["video_frames"])
        paths = {"savedmodel": export_base, "jax": workdir}
        for backend in args["e2e"]:
            if paths[backend] is None:
                continue
            stats = run_video(paths[backend], video_path,
                              os.path.join(scratch, f"out_{tag}_{backend}.mp4"), args["landmarker"])
            rec["video"][backend] = {k: stats[k] for k in ("frames", "faces", "fps_source",
                                                           "fps_processed", "stage_ms",
                                                           "wall_s_including_load")}
        rec["video_input"] = {"photo": os.path.abspath(args["photo"]), "size": list(VIDEO_SIZE),
                              "frames": args["video_frames"]}
    return rec


def _count_params(workdir: str) -> int:
    import jax

    from deocc_jax import inference

    _, variables = inference.load_model(workdir)
    return int(sum(x.size for x in jax.tree.leaves(variables["params"])))


def summary_line(rec: dict) -> str:
    parts = []
    for r in rec["results"]:
        s = (f"{r['config']} {r['resolution']}px: JAX b1 {1e3 * r['jax_latency']['median_s']:.1f} ms, "
             f"b{r['jax_throughput']['batch']} {r['jax_throughput']['images_per_s']:.1f} img/s")
        if "savedmodel_latency" in r:
            s += (f"; SavedModel b1 {1e3 * r['savedmodel_latency']['median_s']:.1f} ms, "
                  f"b{r['savedmodel_throughput']['batch']} "
                  f"{r['savedmodel_throughput']['images_per_s']:.1f} img/s")
        for backend, v in r["video"].items():
            s += f", infer video ({backend}) {v['fps_processed']:.1f} fps"
        parts.append(s)
    return "inference: " + "; ".join(parts) + f" [{rec['machine']['cpu_model']}, " \
        f"{rec['machine']['cpu_cores_available']} cores]"


def run_benchmark(config_name: str, resolutions: list[int], trained_workdir: str | None,
                  scratch: str, args: dict, log=print) -> dict:
    load_start = os.getloadavg()[0]
    os.makedirs(scratch, exist_ok=True)
    rec = {"benchmark": "inference", "config": config_name, "results": []}
    for res in ([None] if trained_workdir else resolutions):
        r = benchmark_resolution(config_name, res, trained_workdir, scratch, args)
        log(f"{r['config']} {r['resolution']}px done: {r['jax_latency']['median_s'] * 1e3:.1f} ms JAX b1")
        rec["results"].append(r)
    rec["machine"] = common.machine_info()
    rec["code"] = common.code_state()
    # Other processes on the same cores slow every figure: compare runs taken at similar load.
    rec["load_average_1m"] = [load_start, os.getloadavg()[0]]
    return rec


def main(argv):
    del argv
    F = flags.FLAGS
    args = {"landmarker": F.landmarker_model, "platforms": F.platforms, "savedmodel": F.savedmodel,
            "latency_repeats": F.latency_repeats, "tp_batch": F.throughput_batch,
            "tp_repeats": F.throughput_repeats, "e2e": [b for b in F.e2e if b],
            "photo": F.photo, "video_frames": F.video_frames}
    for b in args["e2e"]:
        if b not in ("savedmodel", "jax"):
            raise app.UsageError(f"--e2e: unknown backend {b!r} (savedmodel, jax)")
    rec = run_benchmark(F.config, [int(r) for r in F.resolutions], F.workdir, F.scratch_dir, args)
    rec["command"] = " ".join(["python -m benchmarks.inference"] + sys.argv[1:])
    if F.output:
        common.write_json(F.output, rec)
    print(summary_line(rec))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
