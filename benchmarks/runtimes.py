r"""Portable runtimes: conversion time, file size and batch-1 latency of every export variant.

  python -m benchmarks.runtimes --output=benchmarks/results/runtimes.json
  python -m benchmarks.runtimes --config=realtime --resolutions=128 --variants=onnx,tflite_none

For each resolution of --config (default `deocc`; speed depends on the architecture, not on the
weights, so the generator is freshly initialised), it times the jitted JAX model
(`models.make_predict_fn`, the config's own conv_impl: im2col matmuls on CPU) and exports the
same variables with --export_conv_impl (default "xla_conv": identical parameters, one Conv /
CONV_2D per convolution) as ONNX (`exporters.onnx`, run by onnxruntime) and as TFLite float32 / float16 /
dynamic-range int8 (`exporters.tflite`, run by ai-edge-litert). Per variant: conversion seconds,
file MB, the largest difference from JAX, the first call, then the median and min of
--latency_repeats batch-1 calls (seeded random uint8 crops in, numpy out), taken in turns with
the other runtimes so that all see the same load.

`benchmark_resolution` is the function `benchmarks/inference.py` can call to put these rows
next to its SavedModel and JAX ones.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from typing import Any, Callable

from absl import app, flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

VARIANTS = ("onnx", "tflite_none", "tflite_float16", "tflite_dynamic_int8")


def define_flags() -> None:
    """The binary's flags (defined only when run as a program)."""
    flags.DEFINE_string("config", "deocc", "configs/<name>.py whose architecture is timed.")
    flags.DEFINE_list("resolutions", ["128", "256"], "Crop sizes to time.")
    flags.DEFINE_list("variants", list(VARIANTS), "Exports to time (JAX is always timed).")
    flags.DEFINE_integer("latency_repeats", 20, "Timed batch-1 calls (median).")
    flags.DEFINE_integer("threads", 2, "Threads of onnxruntime and LiteRT (XLA uses every core).")
    flags.DEFINE_enum("export_conv_impl", "xla_conv", ["xla_conv", "matmul"],
                      "How the exported graphs compute convolutions (same parameters).")
    flags.DEFINE_string("scratch_dir", "/tmp/deocc_bench/runtimes", "Where exports are written.")
    flags.DEFINE_string("output", "", "JSON file to write.")


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict]:
    """Per call: the first call, then median and min of `repeats` calls taken in turns.

    Round-robin rather than one runtime after the other, so that every runtime sees the same
    background load on a shared machine (the numbers compare; their absolute level drifts).
    """
    out = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()
        out[name] = {"first_call_s": time.perf_counter() - t0}
        fn()  # untimed: thread pools and caches settle
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        out[name].update({"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
                          "repeats": repeats})
    return out


def benchmark_resolution(config_name: str, resolution: int, variants=VARIANTS, *,
                         latency_repeats: int = 20, threads: int = 2,
                         export_conv_impl: str = "xla_conv",
                         scratch_dir: str = "/tmp/deocc_bench/runtimes",
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Exports `config_name`'s generator at `resolution` in each variant and times them with JAX.

    Returns:
      {"config", "resolution", "generator_params", "jax": timings, "<variant>":
      {"convert_s", "file_mb", "max_abs_diff_vs_jax", timings}}.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {VARIANTS}")
    # jax and the library only now: a caller's XLA_FLAGS must be set first (benchmarks/common.py).
    import jax
    import numpy as np

    from deocc_jax import models
    from deocc_jax.exporters import onnx as onnx_export
    from deocc_jax.exporters import tflite as tflite_export
    from deocc_jax.io.onnx_runner import OnnxRunner
    from deocc_jax.io.tflite_runner import TfliteRunner

    config = common.load_config(config_name, resolution, 1)
    variables = jax.jit(functools.partial(models.init_generator, config))(jax.random.key(0))
    guided = models.is_guided(config)
    images = np.random.default_rng(0).integers(0, 256, (1, resolution, resolution, 3), np.uint8)
    masks = np.zeros((1, resolution, resolution, 1), np.uint8) if guided else None
    predict = models.make_predict_fn(config)
    want = {k: np.asarray(v) for k, v in predict(variables, images, masks).items()}
    rec: dict[str, Any] = {
        "config": config_name, "resolution": resolution, "batch": 1, "threads": threads,
        "weights": "fresh initialisation (speed depends on the architecture only)",
        "generator_params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
        "jax": {"conv_impl": models.conv_impl(config)}}

    export_config = config.copy_and_resolve_references()
    export_config.model.conv_impl = export_conv_impl
    export_predict = functools.partial(models.predict, export_config)
    os.makedirs(scratch_dir, exist_ok=True)
    calls = {"jax": lambda: jax.device_get(predict(variables, images, masks))}
    for variant in variants:
        stem = os.path.join(scratch_dir, f"{config_name}_{resolution}_{variant}_{export_conv_impl}")
        t0 = time.perf_counter()
        if variant == "onnx":
            path = onnx_export.export_onnx(export_predict, variables, stem + ".onnx",
                                           resolution=resolution, guided=guided)
            convert_s = time.perf_counter() - t0
            runner = OnnxRunner(path, num_threads=threads)
        elif variant.startswith("tflite_"):
            path = tflite_export.export_tflite(export_predict, variables, stem + ".tflite",
                                               resolution=resolution, guided=guided,
                                               quantize=variant[len("tflite_"):])
            convert_s = time.perf_counter() - t0
            runner = TfliteRunner(path, num_threads=threads)
        else:  # checked above
            raise AssertionError(variant)
        got = runner(images, masks)
        rec[variant] = {"convert_s": convert_s, "file_mb": os.path.getsize(path) / 1e6,
                        "conv_impl": export_conv_impl,
                        "max_abs_diff_vs_jax": int(np.abs(got["deoccluded"].astype(int)
                                                          - want["deoccluded"].astype(int)).max())}
        calls[variant] = functools.partial(runner, images, masks)
        log(f"{resolution} px {variant}: converted in {convert_s:.1f} s, "
            f"{rec[variant]['file_mb']:.1f} MB, max diff {rec[variant]['max_abs_diff_vs_jax']}")
    for name, timing in time_interleaved(calls, latency_repeats).items():
        rec[name].update(timing)
        log(f"{resolution} px {name}: {timing['median_ms']:.1f} ms (min {timing['min_ms']:.1f})")
    return rec


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    # The machine may be shared: the 1-minute load before and after says how busy it was.
    load_before = os.getloadavg()[0]
    results = [benchmark_resolution(f.config, int(r), tuple(f.variants),
                                    latency_repeats=f.latency_repeats, threads=f.threads,
                                    export_conv_impl=f.export_conv_impl,
                                    scratch_dir=f.scratch_dir) for r in f.resolutions]
    record = {"benchmark": "runtimes", "machine": common.machine_info(), "code": common.code_state(),
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
              "results": results}
    if f.output:
        common.write_json(f.output, record)
        print(f"wrote {f.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
