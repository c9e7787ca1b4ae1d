"""Input-pipeline throughput: grain's images/s per core against what the training step eats.

The library of `python -m benchmarks.input_pipeline`, whose docstring says what each figure is.
"""

from __future__ import annotations

import os
import statistics
import time

import grain
import jax
import numpy as np

from benchmarks import common
from deocc_jax.training import sharding, train_lib
from deocc_jax.data import features, input_pipeline


def pipeline_config(data_dir: str, resolution: int, batch_size: int, threads: int,
                    config_name: str = "deocc"):
    """configs/<config_name>.py pointed at `data_dir` with the given batch and thread count."""
    config = common.load_config(config_name, resolution, batch_size, data_dir)
    config.data.num_threads = threads
    return config


def stage_costs(data_dir: str, split: str, n: int, config) -> dict[str, float]:
    """Median single-thread milliseconds per example of read, decode and augment."""
    source = grain.sources.ArrayRecordDataSource(features.list_shards(data_dir, split))
    n = min(n, len(source))
    rng = np.random.default_rng(0)
    t_read, t_decode, t_aug = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        raw = source[i]
        t1 = time.perf_counter()
        ex = features.decode_example(raw, f"{data_dir}/{split}[{i}]")
        ex = {k: ex[k] for k in input_pipeline.IMAGE_KEYS}
        t2 = time.perf_counter()
        input_pipeline.augment(ex, rng, flip_prob=config.data.flip_prob,
                               color_jitter=config.data.color_jitter,
                               clean_prob=config.data.get("clean_prob", 0.0))
        t3 = time.perf_counter()
        t_read.append(t1 - t0)
        t_decode.append(t2 - t1)
        t_aug.append(t3 - t2)
    out = {"examples": n, "read_ms": 1e3 * statistics.median(t_read),
           "decode_ms": 1e3 * statistics.median(t_decode),
           "augment_ms": 1e3 * statistics.median(t_aug)}
    out["total_ms"] = out["read_ms"] + out["decode_ms"] + out["augment_ms"]
    out["images_per_s_one_core"] = 1e3 / out["total_ms"]
    return out


def time_pipeline(config, batches: int, warmup: int) -> dict[str, float]:
    """images/s and images per CPU-second of make_train_iterator after `warmup` batches."""
    it = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
    for _ in range(warmup):
        next(it)
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = 0
    for _ in range(batches):
        b = next(it)
        n += b["clean"].shape[0]
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"threads": int(config.data.num_threads), "batches": batches, "images": n,
            "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall,
            "images_per_cpu_s": n / cpu if cpu > 0 else None,
            "cores_busy": cpu / wall}


def time_train_step(config_name: str, data_config, repeats: int) -> dict[str, float]:
    """Images/s of the jitted train step on a fixed real batch, and fed by the pipeline."""
    config = pipeline_config(data_config.data_dir, data_config.resolution, data_config.batch_size,
                             data_config.data.num_threads, config_name)
    config.data.num_threads = data_config.data.num_threads
    setup = train_lib.build_setup(config)
    state = setup.init()
    it = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
    batch = sharding.put_batch(setup.mesh, next(it))
    t0 = time.perf_counter()
    compiled = setup.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def step(b):
        holder["state"], m = compiled(holder["state"], b)
        jax.block_until_ready((holder["state"], m))

    step(batch)  # warm-up
    fixed = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(batch)
        fixed.append(time.perf_counter() - t0)
    fed = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(sharding.put_batch(setup.mesh, next(it)))
        fed.append(time.perf_counter() - t0)
    bs = config.batch_size
    return {"config": config_name, "compile_s": compile_s,
            "step_s": statistics.median(fixed), "step_s_all": fixed,
            "images_per_s": bs / statistics.median(fixed),
            "fed_step_s": statistics.median(fed), "fed_step_s_all": fed,
            "fed_images_per_s": bs / statistics.median(fed)}


def run_benchmark(data_dir: str, resolution: int, batch_size: int, threads: list[int],
                  batches: int, warmup: int, stage_examples: int, configs: list[str],
                  step_repeats: int) -> dict:
    """Times the stages, the pipeline per thread count and each config's step; the record."""
    load_start = os.getloadavg()[0]
    info = features.read_dataset_info(data_dir)
    base = pipeline_config(data_dir, resolution, batch_size, 1)
    rec = {"benchmark": "input_pipeline", "resolution": resolution, "batch_size": batch_size,
           "dataset": common.dataset_summary(info, data_dir),
           "augment": {"flip_prob": base.data.flip_prob, "color_jitter": base.data.color_jitter},
           "stages_one_thread": stage_costs(data_dir, "train", stage_examples, base),
           "pipeline": [], "train_step": []}
    for t in threads:
        rec["pipeline"].append(time_pipeline(pipeline_config(data_dir, resolution, batch_size, t),
                                             batches, warmup))
    per_core = max(p["images_per_cpu_s"] or 0.0 for p in rec["pipeline"])
    rec["pipeline_images_per_cpu_s"] = per_core
    best = max(rec["pipeline"], key=lambda p: p["images_per_s"])
    for name in configs:
        s = time_train_step(name, pipeline_config(data_dir, resolution, batch_size, best["threads"]),
                            step_repeats)
        s["pipeline_headroom"] = {str(p["threads"]): p["images_per_s"] / s["images_per_s"]
                                  for p in rec["pipeline"]}
        s["input_cores_needed"] = s["images_per_s"] / per_core if per_core else None
        s["fed_slowdown"] = s["fed_step_s"] / s["step_s"]
        rec["train_step"].append(s)
    rec["machine"] = common.machine_info()
    rec["code"] = common.code_state()
    # Other processes on the same cores slow every figure: compare runs taken at similar load.
    rec["load_average_1m"] = [load_start, os.getloadavg()[0]]
    return rec


def summary_line(rec: dict) -> str:
    pipe = ", ".join(f"{p['threads']} thread(s) {p['images_per_s']:.0f} img/s" for p in rec["pipeline"])
    s = (f"input_pipeline {rec['resolution']}px bs{rec['batch_size']}: {pipe}; "
         f"{rec['pipeline_images_per_cpu_s']:.0f} img per CPU-s")
    for t in rec["train_step"]:
        s += (f"; {t['config']} step {t['images_per_s']:.2f} img/s "
              f"(headroom x{max(t['pipeline_headroom'].values()):.0f}, "
              f"{t['input_cores_needed']:.3f} cores of input)")
    return s + f" [{rec['machine']['cpu_model']}, {rec['machine']['cpu_cores_available']} cores]"
