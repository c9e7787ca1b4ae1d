r"""Portable runtimes: conversion time, file size, latency and throughput of every export variant.

  python -m benchmarks.runtimes --output=benchmarks/results/runtimes.json
  python -m benchmarks.runtimes --config=realtime --resolutions=128 --variants=onnx,tflite_none

For each resolution of --config (default `deocc`; speed depends on the architecture, not on the
weights, so the generator is freshly initialised), it times the jitted JAX model
(`models.make_predict_fn`, the config's own conv_impl: im2col matmuls on CPU) and the same
variables in every variant of VARIANTS:

  jax_xla_conv         JAX again, with every convolution as one XLA convolution (same parameters):
                       whether the CPU's forward pass prefers it to the training-friendly matmuls
  savedmodel           `exporters.saved_model` (what `deocc_jax.export` writes, the config's own
                       conv_impl, lowered for the CPU), run by TensorFlow (`SavedModelRunner`)
  onnx                 `exporters.onnx`, run by onnxruntime (`OnnxRunner`)
  tflite_none / _float16 / _dynamic_int8
                       `exporters.tflite` float32 / float16 weights / dynamic-range int8, run by
                       ai-edge-litert (`TfliteRunner`, batch 1, larger batches cut into pieces)

ONNX and TFLite are converted with --export_conv_impl (default "xla_conv": identical parameters,
one Conv / CONV_2D per convolution). Per variant: conversion seconds, file MB, the largest and
mean difference from JAX on the same inputs, the first call, then the median, p95 and min of
--latency_repeats batch-1 calls (uint8 in, numpy out, host copies included) and, with
--throughput_batch > 0, images/s at that batch. Calls are taken in turns with the other runtimes
so that all see the same load on a shared machine.

The library is `benchmarks/runtimes_lib.py` (`benchmarks/inference.py` times the shipped models
with it).
"""

from absl import app, flags

from benchmarks import common, runtimes_lib

_CONFIG = flags.DEFINE_string("config", "deocc", "configs/<name>.py whose architecture is timed.")
_RESOLUTIONS = flags.DEFINE_list("resolutions", ["128", "256"], "Crop sizes to time.")
_VARIANTS = flags.DEFINE_list("variants", list(runtimes_lib.VARIANTS),
                              "Exports to time (JAX is always timed).")
_LATENCY_REPEATS = flags.DEFINE_integer("latency_repeats", 20, "Timed batch-1 calls (median, p95).")
_THROUGHPUT_BATCH = flags.DEFINE_integer("throughput_batch", 8,
                                         "Batch of the throughput figure (0 = none).")
_THROUGHPUT_REPEATS = flags.DEFINE_integer("throughput_repeats", 3,
                                           "Timed calls at --throughput_batch (median).")
_THREADS = flags.DEFINE_integer("threads", 2, "Threads of onnxruntime and LiteRT (XLA uses every "
                                "core).")
_EXPORT_CONV_IMPL = flags.DEFINE_enum("export_conv_impl", "xla_conv", ["xla_conv", "matmul"],
                                      "How the exported graphs compute convolutions (same "
                                      "parameters).")
_SCRATCH_DIR = flags.DEFINE_string("scratch_dir", "/tmp/deocc_bench/runtimes",
                                   "Where exports are written.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file to write.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    record = runtimes_lib.run_benchmark(
        _CONFIG.value, [int(r) for r in _RESOLUTIONS.value], tuple(_VARIANTS.value),
        latency_repeats=_LATENCY_REPEATS.value, throughput_batch=_THROUGHPUT_BATCH.value,
        throughput_repeats=_THROUGHPUT_REPEATS.value, threads=_THREADS.value,
        export_conv_impl=_EXPORT_CONV_IMPL.value, scratch_dir=_SCRATCH_DIR.value)
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, record)
        print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
