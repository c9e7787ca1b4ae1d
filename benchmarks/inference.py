r"""Inference speed and stability of deocc's models, side by side in one run on this CPU.

  python -m benchmarks.inference        # the shipped model -> benchmarks/results/inference.{json,md}
  python -m benchmarks.inference --models=reference=runs/ref,realtime=runs/rt --output=/tmp/x.json
  python -m benchmarks.inference --runtimes=jax --runtime_models= --init_resolutions= --noflicker

One run measures every model of --models (NAME=PATH, JAX model folders: a pretrained folder or a
training workdir; default the shipped model pretrained/deocc-realtime-128; the recorded run adds
the reference model's workdir) and compares each with the --baseline model (default the first):

Live, per model:
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
Runtimes: `benchmarks.runtimes_lib.benchmark_variables` for each model of
  --runtime_models (its own variables, on real aligned faces) and for a freshly initialised
  --init_config generator at each of --init_resolutions (256 px: no trained model is that size):
  conversion time, file size, difference from JAX, batch-1 latency median/p95 and throughput per
  runtime of --runtimes (JAX, JAX with XLA convolutions, SavedModel, ONNX, LiteRT float32 /
  float16 / dynamic int8), timed in turns.

"comparisons" holds the ratios against the peer measured in the same run (each
{"value", "baseline", "ratio" = value / baseline}): every model against the baseline model,
stabilised (and smoothed) processing against per-frame processing, every runtime against JAX.
"targets" reports the live path's targets per model (reported, not asserted). Every section records
the 1-minute load average before and after it, and the record holds the machine
(`common.machine_info`): the development machine has 2 cores shared with other jobs, so compare
figures taken at similar load. A Markdown table of the main figures is written beside the JSON.

The measurements are in `benchmarks/inference_lib.py`, the comparisons and tables in
`benchmarks/inference_report.py`.
"""

import os
import sys

from absl import flags

from benchmarks import common, inference_lib, inference_report, runtimes_lib
from deocc_jax import errors
from deocc_jax.artifacts import predictors

DEFAULT_MODELS = (f"realtime={os.path.join(predictors.PRETRAINED_DIR, predictors.DEFAULT_LIVE_MODEL)}",)
DEFAULT_OUTPUT = os.path.join(common.REPO, "benchmarks", "results", "inference.json")

_MODELS = flags.DEFINE_list("models", list(DEFAULT_MODELS),
                            "NAME=PATH,...: JAX models (pretrained folders or training workdirs) "
                            "to measure side by side.")
_BASELINE = flags.DEFINE_string("baseline", "", "The model the others are compared with "
                                "(default: the first of --models).")
_RUNTIMES = flags.DEFINE_list("runtimes", list(runtimes_lib.RUNTIMES),
                              f"Runtimes to time: {list(runtimes_lib.RUNTIMES)}.")
_RUNTIME_MODELS = flags.DEFINE_list("runtime_models", None, "Models of --models timed in every "
                                    "runtime (default: all; '' = none).")
_INIT_CONFIG = flags.DEFINE_string("init_config", "reference", "configs/<name>.py whose freshly "
                                   "initialised generator is also timed in every runtime at "
                                   "--init_resolutions.")
_INIT_RESOLUTIONS = flags.DEFINE_list("init_resolutions", ["256"], "Resolutions of the "
                                      "--init_config generator ('' = none).")
_E2E = flags.DEFINE_list("e2e", ["jax"], "Runtimes of the `infer` video run ('' = skip it).")
_LATENCY_REPEATS = flags.DEFINE_integer("latency_repeats", 50, "Timed batch-1 calls (p50, p95).")
_THROUGHPUT_BATCH = flags.DEFINE_integer("throughput_batch", 8, "Batch of the throughput figures "
                                         "(0 = none).")
_THROUGHPUT_REPEATS = flags.DEFINE_integer("throughput_repeats", 3, "Timed calls at "
                                           "--throughput_batch (median).")
_THREADS = flags.DEFINE_integer("threads", 2, "Threads of onnxruntime and LiteRT (XLA and "
                                "TensorFlow use every core).")
_EXPORT_CONV_IMPL = flags.DEFINE_enum("export_conv_impl", "xla_conv", ["xla_conv", "matmul"],
                                      "How the ONNX and LiteRT graphs compute convolutions (same "
                                      "parameters).")
_CLIP_SIZE = flags.DEFINE_string("clip_size", "640x480", "WIDTHxHEIGHT of the live clip.")
_CLIP_FPS = flags.DEFINE_float("clip_fps", 30.0, "Frame rate of the live clip (a webcam's).")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 150, "Frames of the live clip.")
_LIVE_CAPACITY = flags.DEFINE_bool("live_capacity", True, "Also run the live pipeline on the clip "
                                   "unpaced.")
_FLICKER = flags.DEFINE_bool("flicker", True, "Measure flicker and its masked-PSNR cost.")
_FLICKER_FRAMES = flags.DEFINE_integer("flicker_frames", 48, "Frames per flicker clip.")
_FLICKER_SIZE = flags.DEFINE_string("flicker_size", "320x240", "WIDTHxHEIGHT of the flicker clips.")
_LANDMARKER_MODEL = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
_SCRATCH_DIR = flags.DEFINE_string("scratch_dir", "/tmp/deocc_bench/inference",
                                   "Where clips, exports and videos are written.")
_OUTPUT = flags.DEFINE_string("output", DEFAULT_OUTPUT, "JSON file to write ('' = none).")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Markdown table to write (default: --output "
                                "with .md).")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    runtime_models = _RUNTIME_MODELS.value
    args = {"runtimes": [r for r in _RUNTIMES.value if r], "e2e": [r for r in _E2E.value if r],
            "runtime_models": None if runtime_models is None else [m for m in runtime_models if m],
            "baseline": _BASELINE.value, "init_config": _INIT_CONFIG.value,
            "init_resolutions": [int(r) for r in _INIT_RESOLUTIONS.value if r],
            "latency_repeats": _LATENCY_REPEATS.value, "tp_batch": _THROUGHPUT_BATCH.value,
            "tp_repeats": _THROUGHPUT_REPEATS.value, "threads": _THREADS.value,
            "export_conv_impl": _EXPORT_CONV_IMPL.value,
            "clip_size": inference_lib.parse_size(_CLIP_SIZE.value, "clip_size"),
            "clip_fps": _CLIP_FPS.value, "clip_frames": _CLIP_FRAMES.value,
            "live_capacity": _LIVE_CAPACITY.value, "flicker": _FLICKER.value,
            "flicker_frames": _FLICKER_FRAMES.value,
            "flicker_size": inference_lib.parse_size(_FLICKER_SIZE.value, "flicker_size"),
            "landmarker": _LANDMARKER_MODEL.value, "scratch_dir": _SCRATCH_DIR.value}
    try:
        inference_lib.check_args(args)
    except ValueError as e:
        raise errors.InvalidInputError(str(e)) from None
    rec = inference_lib.run_benchmark(inference_lib.parse_models(_MODELS.value), args)
    rec["command"] = " ".join(["python -m benchmarks.inference"] + sys.argv[1:])
    output, markdown = _OUTPUT.value, _MARKDOWN.value
    if output:
        common.write_json(output, rec)
        md = markdown or os.path.splitext(output)[0] + ".md"
        with open(md, "w") as f:
            f.write(inference_report.markdown_report(rec))
        print(f"wrote {output} and {md}")
    elif markdown:
        with open(markdown, "w") as f:
            f.write(inference_report.markdown_report(rec))
    print(inference_report.summary_line(rec))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)
