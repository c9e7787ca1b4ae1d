r"""Training-step throughput: our JAX pix2pix against the PyTorch reference, or deocc alone.

  python -m benchmarks.train_step --resolution=128 --batch_size=1 --output=benchmarks/results/x.json
  python -m benchmarks.train_step --config=deocc --resolution=128 --batch_size=8 --output=...

`--config=pix2pix` (default) times one full GAN training step (G forward, D forward/backward/
update on fake and real, G backward through D + L1, G update) of the project's `pix2pix` config
(`configs/pix2pix.py` through `deocc_jax.train_lib.build_setup`) and of the same architecture,
losses, batch and resolution in PyTorch (`benchmarks/torch_pix2pix.py`, the junyanz reference),
alternating the two in this one process after warm-up, and reports medians, the ratio
JAX/PyTorch in images per second, and the JAX compile time separately. `--config=deocc` times the
JAX step alone and reports FLOPs per image (XLA's cost analysis of the compiled step).
`--impl=scratch` times `benchmarks/jax_pix2pix_scratch.py` instead of the project's model (the
formulation study). On a GPU it also reports achieved TFLOP/s and model FLOPs utilisation.

XLA reads XLA_FLAGS once, when jax starts a backend, so `--xla_flags` (and the project's CPU
flags, `--project_xla_flags`) are put into the environment before jax is imported.
Writes one JSON file and prints a one-line summary.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

from absl import app, flags

from benchmarks import common

_CONFIG = flags.DEFINE_enum("config", "pix2pix", ["pix2pix", "deocc"], "Model config to time.")
_IMPL = flags.DEFINE_enum("impl", "project", ["project", "scratch"],
                          "project: configs/<config>.py via train_lib; scratch: the formulation study.")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Image size (square).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images per step (pix2pix's default is 1).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed steps per framework (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compilation.")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both frameworks; 0: all cores "
                                "available to this process.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference (pix2pix only).")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for this run.")
_PROJECT_FLAGS = flags.DEFINE_bool("project_xla_flags", True,
                                   "Apply the CPU XLA flags the project trains with.")
_SCRATCH = flags.DEFINE_string("scratch_options", "",
                               "Options for --impl=scratch, e.g. 'down=s2d_mm,up=subpixel_mm'.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file to write.")

# The CPU flags the project trains with; benchmarks/README.md records why (attempts table).
PROJECT_CPU_XLA_FLAGS: tuple[str, ...] = ()

# Dense peak FLOP/s per chip for MFU (vendor datasheets). fp32 models on NVIDIA GPUs run their
# convolutions and matmuls on TF32 tensor cores under XLA's default precision.
PEAK_TFLOPS = {
    ("H100", "float32"): 494.7, ("H100", "bfloat16"): 989.4,
    ("H200", "float32"): 494.7, ("H200", "bfloat16"): 989.4,
    ("A100", "float32"): 156.0, ("A100", "bfloat16"): 312.0,
}


def _set_xla_flags(extra: str, project: bool) -> str:
    """Adds flags to XLA_FLAGS; must run before jax is imported."""
    parts = os.environ.get("XLA_FLAGS", "").split()
    if project:
        parts += list(PROJECT_CPU_XLA_FLAGS)
    parts += extra.split()
    os.environ["XLA_FLAGS"] = " ".join(parts)
    return os.environ["XLA_FLAGS"]


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def machine_info(threads: int) -> dict:
    """Where the numbers come from (benchmarks.common.machine_info), plus the thread count."""
    return {**common.machine_info(), "threads": threads}


# -----------------------------------------------------------------------------------------------
# The timed step functions. Each builder returns a zero-argument callable that runs one training
# step to completion, plus facts about the model.

def _uint8_batch(res: int, bs: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (bs, res, res, 3), dtype=np.uint8)
    occluded = clean.copy()
    mask = np.zeros((bs, res, res, 1), np.uint8)
    lo, hi = res // 4, 3 * res // 4
    mask[:, lo:hi, lo:hi] = 255
    occluded[:, lo:hi, lo:hi] = rng.integers(0, 256, (bs, hi - lo, hi - lo, 3), dtype=np.uint8)
    return {"clean": clean, "occluded": occluded, "mask": mask}


def project_config(name: str, res: int, bs: int):
    """configs/<name>.py at `res` x `res` and batch `bs`, as trained by train_lib."""
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    config.resolution = res
    config.batch_size = bs
    if name == "pix2pix":
        # The reference uses unet_128 (7 levels, 2 dropout levels) at 128 px and unet_256 at 256:
        # U-Net depth log2(res), dropout on the depth - 5 levels above the innermost.
        depth = res.bit_length() - 1
        config.model.generator.depth = depth
        config.model.generator.dropout_levels = max(depth - 5, 0)
    return config


def _count(tree) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(tree)))


def build_project_step(name: str, res: int, bs: int) -> tuple[Callable, dict]:
    """The project's jitted train step for configs/<name>.py on this process's devices."""
    import jax

    from deocc_jax import train_lib

    config = project_config(name, res, bs)
    setup = train_lib.build_setup(config)
    state = setup.init()
    batch = train_lib.put_batch(setup, _uint8_batch(res, bs)) if hasattr(train_lib, "put_batch") \
        else jax.device_put(_uint8_batch(res, bs))
    t0 = time.perf_counter()
    lowered = setup.train_step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    facts = {"compile_s": compile_s, "flops_per_step": _flops(lowered),
             "g_params": _count(state.g_params),
             "d_params": _count(state.d_params) if state.d_params is not None else 0}
    return run, facts


def build_scratch_step(res: int, bs: int, options: str) -> tuple[Callable, dict]:
    """The formulation-study model (benchmarks/jax_pix2pix_scratch.py)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import jax_pix2pix_scratch as S

    kwargs = {}
    for item in filter(None, options.split(",")):
        k, v = item.split("=")
        kwargs[k] = {"True": True, "False": False}.get(v, v)
    opts = S.Options(**kwargs)
    g, d, tx, state = S.create(res, opts)
    step = S.make_train_step(g, d, tx, opts)
    b = _uint8_batch(res, bs)
    a_img = jnp.asarray(b["occluded"].astype(np.float32) / 127.5 - 1)
    b_img = jnp.asarray(b["clean"].astype(np.float32) / 127.5 - 1)
    t0 = time.perf_counter()
    lowered = step.lower(state, a_img, b_img)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], a_img, b_img)
        jax.block_until_ready((holder["state"], metrics))

    return run, {"compile_s": compile_s, "flops_per_step": _flops(lowered),
                 "g_params": _count(state["g_params"]), "d_params": _count(state["d_params"]),
                 "scratch_options": str(opts)}


def _flops(lowered) -> float | None:
    """XLA's FLOP count of the step's HLO before backend optimisation.

    The same on every backend: after optimisation the GPU compiler turns convolutions and matmuls
    into cuDNN/cuBLAS custom calls that its cost analysis does not count.
    """
    ca = lowered.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    return float(ca["flops"]) if ca and "flops" in ca else None


def build_torch_step(res: int, bs: int, threads: int) -> tuple[Callable, dict]:
    """The PyTorch reference step (CPU, or CUDA when jax runs on a GPU and torch sees one)."""
    import jax
    import numpy as np
    import torch

    from benchmarks.torch_pix2pix import Pix2PixTorch

    torch.set_num_threads(threads)
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    model = Pix2PixTorch(resolution=res)
    model.net_g.to(device)
    model.net_d.to(device)
    # Optimisers were built on the CPU parameters; Adam state is created lazily, so re-creating
    # them after the move keeps the reference's hyper-parameters.
    model.opt_g = torch.optim.Adam(model.net_g.parameters(), lr=model.lr, betas=(model.beta1, 0.999))
    model.opt_d = torch.optim.Adam(model.net_d.parameters(), lr=model.lr, betas=(model.beta1, 0.999))
    b = _uint8_batch(res, bs)
    to_t = lambda x: torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1).to(device)
    real_a, real_b = to_t(b["occluded"]), to_t(b["clean"])

    def run():
        model.train_step(real_a, real_b)
        if device == "cuda":
            torch.cuda.synchronize()

    return run, {"torch_version": torch.__version__, "torch_device": device,
                 "torch_threads": torch.get_num_threads(),
                 "g_params": sum(p.numel() for p in model.net_g.parameters()),
                 "d_params": sum(p.numel() for p in model.net_d.parameters())}


def time_alternating(runs: dict[str, Callable], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Warms every callable up, then times them in turn, `repeats` rounds (shared noise)."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _peak_tflops(device_kind: str, dtype: str) -> float | None:
    for (name, dt), peak in PEAK_TFLOPS.items():
        if name in device_kind and dt == dtype:
            return peak
    return None


def run_benchmark(config: str, impl: str, res: int, bs: int, repeats: int, warmup: int,
                  threads: int, with_torch: bool, scratch_options: str = "") -> dict:
    """Builds, warms up and times the steps; returns the result record."""
    import jax

    if res & (res - 1) or res < 32:
        raise ValueError(f"--resolution must be a power of two >= 32, got {res}")
    if bs < 1:
        raise ValueError(f"--batch_size must be >= 1, got {bs}")
    if config == "deocc" and impl == "scratch":
        raise ValueError("--impl=scratch only implements pix2pix")
    if impl == "scratch":
        jax_run, jax_facts = build_scratch_step(res, bs, scratch_options)
    else:
        jax_run, jax_facts = build_project_step(config, res, bs)
    runs = {"jax": jax_run}
    torch_facts = {}
    if with_torch and config == "pix2pix":
        torch_run, torch_facts = build_torch_step(res, bs, threads)
        runs["torch"] = torch_run
    load_start = os.getloadavg()[0]
    times = time_alternating(runs, warmup, repeats)
    load_end = os.getloadavg()[0]
    jax_s = statistics.median(times["jax"])
    rec = {
        "benchmark": "train_step", "config": config, "impl": impl, "resolution": res,
        "batch_size": bs, "repeats": repeats, "warmup": warmup,
        "jax_step_s": jax_s, "jax_images_per_s": bs / jax_s, "jax_step_s_all": times["jax"],
        "compile_s": jax_facts["compile_s"],
        "jax_g_params": jax_facts["g_params"], "jax_d_params": jax_facts["d_params"],
        "flops_per_step": jax_facts["flops_per_step"],
        "flops_per_image": jax_facts["flops_per_step"] / bs if jax_facts["flops_per_step"] else None,
        "machine": machine_info(threads),
        # Other processes on the same cores slow both frameworks, torch's OpenMP threads much more
        # than XLA's: compare figures taken at similar, low load.
        "load_average_1m": [load_start, load_end],
    }
    if "scratch_options" in jax_facts:
        rec["scratch_options"] = jax_facts["scratch_options"]
    if rec["flops_per_step"]:
        rec["jax_achieved_tflops"] = rec["flops_per_step"] / jax_s / 1e12
        if jax.default_backend() == "gpu":
            dtype = "float32"
            if impl == "project":
                dtype = project_config(config, res, bs).model.get("compute_dtype", "float32")
            peak = _peak_tflops(rec["machine"]["jax_device"], dtype)
            rec["peak_tflops"] = peak
            rec["mfu"] = rec["jax_achieved_tflops"] / peak if peak else None
    if "torch" in times:
        torch_s = statistics.median(times["torch"])
        rec.update({"torch_step_s": torch_s, "torch_images_per_s": bs / torch_s,
                    "torch_step_s_all": times["torch"], "ratio": torch_s / jax_s,
                    "ratio_of_best": min(times["torch"]) / min(times["jax"]),
                    "torch_g_params": torch_facts["g_params"], "torch_d_params": torch_facts["d_params"],
                    "torch_version": torch_facts["torch_version"],
                    "torch_device": torch_facts["torch_device"],
                    "torch_threads": torch_facts["torch_threads"]})
    return rec


def summary_line(rec: dict) -> str:
    s = (f"train_step {rec['config']}/{rec['impl']} {rec['resolution']}px bs{rec['batch_size']}: "
         f"jax {rec['jax_images_per_s']:.3f} img/s (compile {rec['compile_s']:.1f} s)")
    if "torch_images_per_s" in rec:
        s += f", torch {rec['torch_images_per_s']:.3f} img/s, ratio jax/torch {rec['ratio']:.2f}"
    if rec.get("flops_per_image"):
        s += f", {rec['flops_per_image'] / 1e9:.1f} GFLOP/image"
    if rec.get("mfu") is not None:
        s += f", {rec['jax_achieved_tflops']:.1f} TFLOP/s, MFU {100 * rec['mfu']:.1f}%"
    return s + f" [{rec['machine']['cpu_model']}, {rec['machine']['threads']} threads]"


def main(argv):
    del argv
    _set_xla_flags(_XLA_FLAGS.value, _PROJECT_FLAGS.value)
    threads = _THREADS.value or available_cores()
    rec = run_benchmark(_CONFIG.value, _IMPL.value, _RESOLUTION.value, _BATCH.value,
                        _REPEATS.value, _WARMUP.value, threads, _TORCH.value, _SCRATCH.value)
    if _OUTPUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            json.dump(rec, f, indent=2)
    print(summary_line(rec))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app.run(main)
