"""Training-step throughput: the project's JAX step and the PyTorch pix2pix reference, timed.

The library of `python -m benchmarks.train_step` (whose docstring says what is measured). Only
`steps`, `models` and `sharding` are imported, none of which imports TensorFlow, clu, MediaPipe,
grain or orbax, so the same code runs on a bare GPU image. XLA reads XLA_FLAGS once, when jax
starts a backend, so `set_xla_flags` must run before jax is imported: that is why jax and
deocc_jax are imported inside the functions of this module.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

from benchmarks import common  # imports no jax

# The CPU flags the project trains with: none helped (docs/speed.md, "What did not").
PROJECT_CPU_XLA_FLAGS: tuple[str, ...] = ()

# Dense peak FLOP/s per chip for MFU (vendor datasheets). float32 models on NVIDIA GPUs run their
# convolutions and matmuls on TF32 tensor cores under XLA's default precision.
PEAK_TFLOPS = {
    ("H100", "float32"): 494.7, ("H100", "bfloat16"): 989.4,
    ("H200", "float32"): 494.7, ("H200", "bfloat16"): 989.4,
    ("A100", "float32"): 156.0, ("A100", "bfloat16"): 312.0,
}
MATMUL_PRECISIONS = ("default", "high", "highest")


def set_xla_flags(extra: str, project: bool) -> str:
    """Adds flags to XLA_FLAGS; must run before jax starts a backend."""
    parts = os.environ.get("XLA_FLAGS", "").split()
    if project:
        parts += list(PROJECT_CPU_XLA_FLAGS)
    parts += extra.split()
    os.environ["XLA_FLAGS"] = " ".join(parts)
    return os.environ["XLA_FLAGS"]


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def project_config(spec: str, res: int, bs: int, conv_impl: str = ""):
    """configs/<name>.py (spec "name" or "name:arg") at `res` x `res` and batch `bs`.

    pix2pix follows the reference: unet_128 (7 levels, 2 dropout levels) at 128 px, unet_256 at
    256, i.e. U-Net depth log2(res) with dropout on the depth - 5 levels above the innermost.
    """
    name, _, arg = spec.partition(":")
    config = common.load_config(name, res, bs, arg=arg or None)
    if name == "pix2pix":
        depth = res.bit_length() - 1
        config.model.generator.depth = depth
        config.model.generator.dropout_levels = max(depth - 5, 0)
    if conv_impl:
        config.model.conv_impl = conv_impl
    return config


def uint8_batch(res: int, bs: int, seed: int = 0) -> dict:
    """A seeded random batch in the trainer's format: a dense conv net costs the same on any pixels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (bs, res, res, 3), dtype=np.uint8)
    occluded = clean.copy()
    mask = np.zeros((bs, res, res, 1), np.uint8)
    lo, hi = res // 4, 3 * res // 4
    mask[:, lo:hi, lo:hi] = 255
    occluded[:, lo:hi, lo:hi] = rng.integers(0, 256, (bs, hi - lo, hi - lo, 3), dtype=np.uint8)
    return {"clean": clean, "occluded": occluded, "mask": mask}


def _count(tree) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(tree)))


def project_step(config, mesh=None):
    """The trainer's jitted step and a fresh state for `config`, as `train_lib.build_setup` lays
    them out: state sharded by `sharding.param_sharding_rule`, batch split over the mesh's
    "data" axis, state donated, parameter init with an "rbg" key.

    Returns:
      (jitted step(state, batch) -> (state, metrics), initial state, mesh).
    """
    import functools

    import jax

    from deocc_jax.training import sharding, steps

    mesh = sharding.make_mesh() if mesh is None else mesh
    sharding.check_batch_size(config.batch_size, mesh, "--batch_size")
    modules, _ = steps.build_modules(config)
    init_fn = functools.partial(steps.init_state, config, modules)
    rng = jax.random.key(config.seed, impl="rbg")
    state_sharding = jax.tree.map(
        sharding.param_sharding_rule(mesh, config.get("fsdp_min_params", 0)),
        jax.eval_shape(init_fn, rng))
    step = jax.jit(functools.partial(steps.train_step, config=config, modules=modules),
                   in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    state = jax.jit(init_fn, out_shardings=state_sharding)(rng)
    return step, state, mesh


def build_project_step(config, matmul_precision: str = "default") -> tuple[Callable, dict]:
    """A zero-argument callable running one training step of `config` to completion, and facts."""
    import jax

    from deocc_jax import models
    from deocc_jax.training import sharding
    from deocc_jax.models import layers

    step, state, mesh = project_step(config)
    batch = sharding.put_batch(mesh, uint8_batch(config.resolution, config.batch_size))
    precision = None if matmul_precision == "default" else matmul_precision
    t0 = time.perf_counter()
    with jax.default_matmul_precision(precision):
        lowered = step.lower(state, batch)
        compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    return run, {"compile_s": compile_s, "flops_per_step": _flops(lowered),
                 "g_params": _count(state.g.params),
                 "d_params": _count(state.d.params) if state.d is not None else 0,
                 "devices": int(mesh.devices.size),
                 # "auto" resolved: what this backend actually computes.
                 "conv_impl": layers.resolve_conv_impl(models.conv_impl(config)),
                 "compute_dtype": str(models.compute_dtype(config))}


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

    try:
        import torch  # benchmarks only: requirements-bench.txt
    except ImportError:
        raise SystemExit("benchmarks.train_step: torch is not installed; pip install -r "
                         "requirements-bench.txt (CPU build), or pass --notorch") from None

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
    b = uint8_batch(res, bs)

    def to_t(x):
        return torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1).to(device)

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


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for (name, dt), peak in PEAK_TFLOPS.items():
        if name in device_kind and dt == dtype:
            return peak
    return None


def run_benchmark(config_spec: str, res: int, bs: int, repeats: int, warmup: int, threads: int,
                  with_torch: bool, conv_impl: str = "",
                  matmul_precision: str = "default") -> dict[str, Any]:
    """Builds, warms up and times the steps; returns the result record."""
    import jax

    if res & (res - 1) or res < 32:
        raise ValueError(f"--resolution must be a power of two >= 32, got {res}")
    if bs < 1:
        raise ValueError(f"--batch_size must be >= 1, got {bs}")
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"--matmul_precision must be one of {MATMUL_PRECISIONS}")
    with_torch = with_torch and config_spec.partition(":")[0] == "pix2pix"
    if with_torch and res < 64:
        raise ValueError(f"--resolution={res}: the PyTorch reference needs >= 64 (or --notorch)")
    config = project_config(config_spec, res, bs, conv_impl)
    jax_run, jax_facts = build_project_step(config, matmul_precision)
    runs = {"jax": jax_run}
    torch_facts = {}
    if with_torch:
        torch_run, torch_facts = build_torch_step(res, bs, threads)
        runs["torch"] = torch_run
    load_start = os.getloadavg()[0]
    times = time_alternating(runs, warmup, repeats)
    load_end = os.getloadavg()[0]
    jax_s = statistics.median(times["jax"])
    flops = jax_facts["flops_per_step"]
    rec = {
        "benchmark": "train_step", "config": config_spec, "resolution": res, "batch_size": bs,
        "repeats": repeats, "warmup": warmup, "conv_impl": jax_facts["conv_impl"],
        "matmul_precision": matmul_precision, "compute_dtype": jax_facts["compute_dtype"],
        "devices": jax_facts["devices"],
        "jax_step_s": jax_s, "jax_images_per_s": bs / jax_s, "jax_step_s_all": times["jax"],
        "compile_s": jax_facts["compile_s"],
        "jax_g_params": jax_facts["g_params"], "jax_d_params": jax_facts["d_params"],
        "flops_per_step": flops, "flops_per_image": flops / bs if flops else None,
        "machine": {**common.machine_info(), "threads": threads},
        "code": common.code_state(),
        # Other processes on the same cores slow both frameworks, torch's OpenMP threads much more
        # than XLA's: compare figures taken at similar, low load.
        "load_average_1m": [load_start, load_end],
    }
    if flops:
        rec["jax_achieved_tflops"] = flops / jax_s / 1e12
        if jax.default_backend() == "gpu":
            peak = peak_tflops(rec["machine"]["jax_device"], jax_facts["compute_dtype"])
            rec["peak_tflops"] = peak
            rec["mfu"] = rec["jax_achieved_tflops"] / peak if peak else None
    if "torch" in times:
        torch_s = statistics.median(times["torch"])
        rec.update({"torch_step_s": torch_s, "torch_images_per_s": bs / torch_s,
                    "torch_step_s_all": times["torch"], "ratio": torch_s / jax_s,
                    "ratio_of_best": min(times["torch"]) / min(times["jax"]),
                    "torch_g_params": torch_facts["g_params"],
                    "torch_d_params": torch_facts["d_params"],
                    "torch_version": torch_facts["torch_version"],
                    "torch_device": torch_facts["torch_device"],
                    "torch_threads": torch_facts["torch_threads"]})
    return rec


def summary_line(rec: dict) -> str:
    s = (f"train_step {rec['config']} ({rec['conv_impl']}) {rec['resolution']}px "
         f"bs{rec['batch_size']}: jax {rec['jax_images_per_s']:.3f} img/s "
         f"(compile {rec['compile_s']:.1f} s)")
    if "torch_images_per_s" in rec:
        s += f", torch {rec['torch_images_per_s']:.3f} img/s, ratio jax/torch {rec['ratio']:.2f}"
    if rec.get("flops_per_image"):
        s += f", {rec['flops_per_image'] / 1e9:.1f} GFLOP/image"
    if rec.get("mfu") is not None:
        s += f", {rec['jax_achieved_tflops']:.1f} TFLOP/s, MFU {100 * rec['mfu']:.1f}%"
    return s + f" [{rec['machine']['cpu_model']}, {rec['machine']['threads']} threads]"
