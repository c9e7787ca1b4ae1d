"""Portable runtimes: export a model's variables in each variant and time it against JAX.

`benchmark_variables` times any model's variables (`benchmarks/inference_lib.py` calls it for the
shipped models on real aligned faces); `benchmark_resolution` times a config's fresh generator.
`python -m benchmarks.runtimes` (the binary) describes the variants and what each row holds.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from benchmarks import common
from deocc_jax import models
from deocc_jax.artifacts.exporters import onnx as onnx_export
from deocc_jax.artifacts.exporters import saved_model as saved_model_export
from deocc_jax.artifacts.exporters import tflite as tflite_export
from deocc_jax.io.onnx_runner import OnnxRunner
from deocc_jax.io.saved_model_runner import SavedModelRunner
from deocc_jax.io.tflite_runner import TfliteRunner
from deocc_jax.models import layers

VARIANTS = ("jax_xla_conv", "savedmodel", "onnx", "tflite_none", "tflite_float16",
            "tflite_dynamic_int8")
# Every runtime a model can be timed in: JAX as loaded (always timed), then the variants.
RUNTIMES = ("jax",) + VARIANTS


def time_interleaved(calls: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, dict]:
    """Per call: the first call, then median, p95 and min of `repeats` calls taken in turns.

    Round-robin rather than one runtime after the other, so that every runtime sees the same
    background load on a shared machine (the numbers compare; their absolute level drifts).

    Returns:
      name -> {"first_call_s", "median_ms", "p95_ms", "min_ms", "repeats", "all_ms"}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
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
            times[name].append(1e3 * (time.perf_counter() - t0))
    for name, ts in times.items():
        out[name].update({"median_ms": statistics.median(ts), "p95_ms": float(np.percentile(ts, 95)),
                          "min_ms": min(ts), "repeats": repeats, "all_ms": ts})
    return out


def _size_mb(path: str) -> float:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    return os.path.getsize(path) / 1e6


def export_variant(variant: str, config, variables, stem: str, *, export_conv_impl: str,
                   threads: int) -> tuple[Callable[..., Mapping[str, Any]], dict[str, Any]]:
    """Produces `variant` of the model and opens it in its runtime.

    Args:
      variant: one of VARIANTS.
      config: the model's config; variables: its float32 variables.
      stem: path prefix of the files written.
      export_conv_impl: conv_impl of the ONNX and TFLite graphs.
      threads: onnxruntime / LiteRT threads.

    Returns:
      (fn(images, masks) -> {"deoccluded", "mask"} numpy, {"path", "convert_s", "file_mb",
      "conv_impl", "runtime"}).
    """
    guided = models.is_guided(config)
    r = int(config.resolution)
    t0 = time.perf_counter()
    if variant == "jax_xla_conv":
        cfg = config.copy_and_resolve_references()
        cfg.model.conv_impl = "xla_conv"
        predict = models.make_predict_fn(cfg)
        fn = lambda x, m: jax.device_get(predict(variables, x, m))  # noqa: E731
        # Nothing is converted: compilation is the first call, as for "jax".
        return fn, {"path": None, "convert_s": None, "file_mb": None, "conv_impl": "xla_conv",
                    "runtime": f"jax {jax.__version__} (jit)"}
    if variant == "savedmodel":
        # What `deocc_jax.export` writes: the config's own conv_impl, resolved at trace time.
        base = stem + "_savedmodel"
        shutil.rmtree(base, ignore_errors=True)
        path = saved_model_export.export_saved_model(
            functools.partial(models.predict, config), variables, base, resolution=r,
            guided=guided, version=1, platforms=("cpu",))
        convert_s = time.perf_counter() - t0
        runner = SavedModelRunner(path)
        conv = layers.resolve_conv_impl(models.conv_impl(config))
        runtime = "tensorflow (all cores)"
    else:
        export_config = config.copy_and_resolve_references()
        export_config.model.conv_impl = export_conv_impl
        export_predict = functools.partial(models.predict, export_config)
        conv = export_conv_impl
        if variant == "onnx":
            path = onnx_export.export_onnx(export_predict, variables, stem + ".onnx",
                                           resolution=r, guided=guided)
            convert_s = time.perf_counter() - t0
            runner = OnnxRunner(path, num_threads=threads)
            runtime = f"onnxruntime ({threads} threads)"
        elif variant.startswith("tflite_"):
            path = tflite_export.export_tflite(export_predict, variables, stem + ".tflite",
                                               resolution=r, guided=guided,
                                               quantize=variant[len("tflite_"):])
            convert_s = time.perf_counter() - t0
            runner = TfliteRunner(path, num_threads=threads)
            runtime = f"ai-edge-litert ({threads} threads)"
        else:
            raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return runner, {"path": os.path.abspath(path), "convert_s": convert_s, "file_mb": _size_mb(path),
                    "conv_impl": conv, "runtime": runtime}


def benchmark_variables(config, variables, variants=VARIANTS, *, tag: str,
                        images: np.ndarray | None = None, latency_repeats: int = 20,
                        throughput_batch: int = 0, throughput_repeats: int = 3, threads: int = 2,
                        export_conv_impl: str = "xla_conv",
                        scratch_dir: str = "/tmp/deocc_bench/runtimes",
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Exports a model's variables in each variant and times them with JAX, in turns.

    Args:
      config: the model's config (its resolution and mode).
      variables: its generator variables.
      variants: names from VARIANTS ("jax" is always timed).
      tag: names the files written under `scratch_dir`.
      images: uint8 [N, R, R, 3] inputs (e.g. real aligned faces): the first is the
        batch-1 input, all N give the differences from JAX, and they are repeated to fill
        the throughput batch; None = seeded random crops.
      latency_repeats: timed batch-1 calls per runtime.
      throughput_batch: images per call of the throughput figure (0 = none).
      throughput_repeats: timed calls at that batch.
      threads: onnxruntime / LiteRT threads.
      export_conv_impl: conv_impl of the ONNX and TFLite graphs.
      scratch_dir: where exports go.
      log: progress lines.

    Returns:
      {"resolution", "batch", "threads", "inputs", "generator_params", "jax": row, "<variant>":
      row}; a row has first_call_s, median_ms, p95_ms, min_ms, repeats, all_ms, conv_impl,
      runtime, and for exports path, convert_s, file_mb, max_abs_diff_vs_jax,
      mean_abs_diff_vs_jax; with a throughput batch also "throughput": {"batch",
      "median_ms", "images_per_s", ...}.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {VARIANTS}")
    r = int(config.resolution)
    guided = models.is_guided(config)
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (1, r, r, 3), np.uint8)
        inputs = "seeded random uint8 crops"
    else:
        inputs = f"{len(images)} given crop(s)"
    if images.dtype != np.uint8 or images.shape[1:] != (r, r, 3):
        raise ValueError(f"images must be uint8 [N, {r}, {r}, 3], got {images.dtype}{images.shape}")
    masks = (np.zeros((len(images), r, r, 1), np.uint8) if guided else None)
    predict = models.make_predict_fn(config)
    jax_fn = lambda x, m: jax.device_get(predict(variables, x, m))  # noqa: E731
    want = {k: np.asarray(v) for k, v in jax_fn(images, masks).items()}
    rec: dict[str, Any] = {
        "resolution": r, "batch": 1, "threads": threads, "inputs": inputs,
        "generator_params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
        "jax": {"conv_impl": layers.resolve_conv_impl(models.conv_impl(config)),
                "runtime": f"jax {jax.__version__} (jit)"}}
    fns = {"jax": jax_fn}
    os.makedirs(scratch_dir, exist_ok=True)
    for variant in variants:
        fn, info = export_variant(variant, config, variables, os.path.join(
            scratch_dir, f"{tag}_{variant}_{export_conv_impl}"),
            export_conv_impl=export_conv_impl, threads=threads)
        got = fn(images, masks)
        diff = np.abs(got["deoccluded"].astype(np.int16) - want["deoccluded"].astype(np.int16))
        rec[variant] = {**info, "max_abs_diff_vs_jax": int(diff.max()),
                        "mean_abs_diff_vs_jax": float(diff.mean())}
        fns[variant] = fn
        log(f"{tag} {variant}: "
            + (f"converted in {info['convert_s']:.1f} s, {info['file_mb']:.1f} MB, "
               if info["convert_s"] is not None else "")
            + f"max diff {rec[variant]['max_abs_diff_vs_jax']}")

    one = (images[:1], None if masks is None else masks[:1])
    timings = time_interleaved({n: functools.partial(f, *one) for n, f in fns.items()},
                               latency_repeats)
    for name, timing in timings.items():
        rec[name].update(timing)
        log(f"{tag} {name}: batch 1 {timing['median_ms']:.1f} ms (p95 {timing['p95_ms']:.1f})")
    if throughput_batch > 0:
        idx = np.arange(throughput_batch) % len(images)
        batch = (images[idx], None if masks is None else masks[idx])
        for name, timing in time_interleaved({n: functools.partial(f, *batch) for n, f in fns.items()},
                                             throughput_repeats).items():
            timing.update({"batch": throughput_batch,
                           "images_per_s": 1e3 * throughput_batch / timing["median_ms"]})
            rec[name]["throughput"] = timing
            log(f"{tag} {name}: batch {throughput_batch} {timing['images_per_s']:.1f} img/s")
    return rec


def benchmark_resolution(config_name: str, resolution: int, variants=VARIANTS, *,
                         latency_repeats: int = 20, throughput_batch: int = 0,
                         throughput_repeats: int = 3, threads: int = 2,
                         export_conv_impl: str = "xla_conv",
                         scratch_dir: str = "/tmp/deocc_bench/runtimes",
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """`benchmark_variables` on `config_name`'s freshly initialised generator at `resolution`.

    Returns:
      {"config", "weights", **benchmark_variables(...)}.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:  # before the model is built
        raise ValueError(f"unknown variant(s) {unknown}; known: {VARIANTS}")
    config = common.load_config(config_name, resolution, 1)
    variables = jax.jit(functools.partial(models.init_generator, config))(jax.random.key(0))
    rec = benchmark_variables(config, variables, variants, tag=f"{config_name}_{resolution}",
                              latency_repeats=latency_repeats, throughput_batch=throughput_batch,
                              throughput_repeats=throughput_repeats, threads=threads,
                              export_conv_impl=export_conv_impl, scratch_dir=scratch_dir, log=log)
    return {"config": config_name,
            "weights": "fresh initialisation (speed depends on the architecture only)", **rec}


def run_benchmark(config_name: str, resolutions: list[int], variants=VARIANTS,
                  **kwargs) -> dict[str, Any]:
    """`benchmark_resolution` at each resolution, with the machine, code and load; the record.

    Args:
      config_name: configs/<name>.py whose fresh generator is timed.
      resolutions: crop sizes, in order.
      variants: names from VARIANTS.
      **kwargs: `benchmark_resolution`'s keyword arguments.
    """
    # The machine may be shared: the 1-minute load before and after says how busy it was.
    load_before = os.getloadavg()[0]
    results = [benchmark_resolution(config_name, r, variants, **kwargs) for r in resolutions]
    return {"benchmark": "runtimes", "machine": common.machine_info(), "code": common.code_state(),
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "results": results}
