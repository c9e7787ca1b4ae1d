r"""Formulation study: several scratch-JAX pix2pix formulations and torch, alternating in one process.

  python -m benchmarks.explore_speed --resolution=128 --batch_size=1 \
      --variants='down=strided,up=transpose,d_batched=False,d_s1=conv;down=s2d_mm,up=subpixel_mm,d_s1=mm'

Every variant (options of `benchmarks.jax_pix2pix_scratch.Options`) and the torch reference are
built and warmed up, then timed round-robin, one step each per round, so they share the same
background load. XLA flags apply to the whole process: set XLA_FLAGS in the environment to compare
flags (one process per flag set). Prints one JSON line per variant; used for the attempts table in
benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app, flags

from benchmarks import train_step as ts

_VARIANTS = flags.DEFINE_string("variants", "down=s2d_mm,up=subpixel_mm,d_s1=mm",
                                "';'-separated scratch option sets.")
# --resolution, --batch_size, --repeats, --warmup, --torch, --threads: train_step's flags.
_RESOLUTION, _BATCH, _REPEATS, _WARMUP, _TORCH = (ts._RESOLUTION, ts._BATCH, ts._REPEATS, ts._WARMUP,
                                                  ts._TORCH)
_LABEL = flags.DEFINE_string("label", "", "Free text copied into the output.")


def main(argv):
    del argv
    threads = ts._THREADS.value or ts.available_cores()
    res, bs = _RESOLUTION.value, _BATCH.value
    runs, compile_s = {}, {}
    for v in filter(None, _VARIANTS.value.split(";")):
        runs[v], facts = ts.build_scratch_step(res, bs, v)
        compile_s[v] = facts["compile_s"]
    if _TORCH.value:
        runs["torch"], _ = ts.build_torch_step(res, bs, threads)
    load0 = os.getloadavg()[0]
    times = ts.time_alternating(runs, _WARMUP.value, _REPEATS.value)
    load1 = os.getloadavg()[0]
    t_med = statistics.median(times["torch"]) if "torch" in times else None
    t_min = min(times["torch"]) if "torch" in times else None
    for k, v in times.items():
        rec = {"label": _LABEL.value, "variant": k, "resolution": res, "batch_size": bs,
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "median_s": round(statistics.median(v), 4),
               "min_s": round(min(v), 4), "images_per_s": round(bs / statistics.median(v), 3),
               "load_1m": [round(load0, 2), round(load1, 2)], "threads": threads}
        if k != "torch":
            rec["compile_s"] = round(compile_s[k], 1)
            if t_med:
                rec["ratio_vs_torch"] = round(t_med / statistics.median(v), 3)
                rec["ratio_of_best_vs_torch"] = round(t_min / min(v), 3)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    app.run(main)
