r"""Training-step throughput: the project's JAX step against the PyTorch pix2pix reference.

  python -m benchmarks.train_step --resolution=128 --batch_size=1 --output=benchmarks/results/x.json
  python -m benchmarks.train_step --config=deocc --resolution=128 --batch_size=8 --output=...
  python -m benchmarks.train_step --config=tiny --resolution=32 --batch_size=2 --repeats=2  # smoke

Times one full GAN training step of `configs/<--config>.py` as the trainer runs it: the networks
of `deocc_jax.models`, the step of `deocc_jax.training.steps.train_step` (G forward, D and G gradients from
one forward pass, both Adam updates), jitted with the state donated and laid out on a mesh of
every device the way `train_lib.build_setup` does (`project_step`). Only `steps`, `models` and
`sharding` are imported, none of which imports TensorFlow, clu, MediaPipe, grain or orbax, so the
same code runs on a bare GPU image.

With `--config=pix2pix` (default) and `--torch` (default) it also times the PyTorch reference
(`benchmarks/torch_pix2pix.py`, the junyanz model: same architecture, losses, batch and
resolution; CUDA when JAX runs on a GPU), alternating the two in this one process after warm-up
so that both see the same background load, and reports medians, the ratio JAX/PyTorch in images
per second and the JAX compile time separately. Other configs time the JAX step alone. Always
reported: FLOPs per image (XLA's cost analysis of the step); on a GPU also achieved TFLOP/s and
model FLOPs utilisation.

`--conv_impl` (matmul | xla_conv; default: the config's, "auto") and `--matmul_precision`
(jax.default_matmul_precision around compilation) compare the two convolution formulations and
TF32 against full float32 on a GPU (docs/speed.md).

XLA reads XLA_FLAGS once, when jax starts a backend, so `--xla_flags` (and the project's CPU
flags, `--project_xla_flags`) are put into the environment in `main` before jax is imported:
that is why jax and deocc_jax are imported inside the functions of `benchmarks/train_step_lib.py`,
the library this binary calls.
Writes one JSON file and prints a one-line summary.
"""

import sys

from absl import app, flags

from benchmarks import common, train_step_lib  # import no jax

_CONFIG = flags.DEFINE_string("config", "pix2pix", "configs/<name>.py to time, optionally NAME:ARG "
                              "(e.g. deocc:runlocal).")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Image size (square, a power of two >= 32).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Images per step (pix2pix's default is 1).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed steps per framework (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compilation.")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for torch; 0: all cores available to "
                                "this process (XLA:CPU sizes its pool to the same cores).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference (pix2pix only; needs "
                           "requirements-bench.txt).")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "", ["", "auto", "matmul", "xla_conv"],
                               "Override config.model.conv_impl ('' = the config's).")
_MATMUL_PRECISION = flags.DEFINE_enum(
    "matmul_precision", "default", list(train_step_lib.MATMUL_PRECISIONS),
    "jax.default_matmul_precision for the JAX step (GPU: highest = no TF32).")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for this run.")
_PROJECT_XLA_FLAGS = flags.DEFINE_bool("project_xla_flags", True,
                                       "Apply the CPU XLA flags the project trains with.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file to write.")


def main(argv):
    del argv
    train_step_lib.set_xla_flags(_XLA_FLAGS.value, _PROJECT_XLA_FLAGS.value)
    threads = _THREADS.value or train_step_lib.available_cores()
    rec = train_step_lib.run_benchmark(_CONFIG.value, _RESOLUTION.value, _BATCH_SIZE.value,
                                       _REPEATS.value, _WARMUP.value, threads, _TORCH.value,
                                       _CONV_IMPL.value, _MATMUL_PRECISION.value)
    rec["command"] = " ".join(["python -m benchmarks.train_step"] + sys.argv[1:])
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, rec)
    print(train_step_lib.summary_line(rec))


if __name__ == "__main__":
    app.run(main)
