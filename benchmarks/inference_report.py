"""What an inference benchmark record means: comparisons with peers, targets, tables.

`comparisons` and `targets` read the record `inference_lib.run_benchmark` builds (and add nothing
measured); `markdown_report` and `summary_line` are what `python -m benchmarks.inference` writes
and prints.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks import runtimes_lib
from deocc_jax.streaming import flicker as flicker_lib

# The live path's targets, reported per model (not asserted): name -> (comparison, limit, meaning).
TARGETS = {
    "model_stage_p50_ms": ("<=", 15.0, "model stage per face (ms, p50)"),
    "live_fps": (">=", 25.0, "live pipeline output frames/s (one face; the clip is in live.clip)"),
    "flicker_reduction": (">=", flicker_lib.TARGET_FLICKER_REDUCTION,
                          "flicker reduction of stabilised vs per-frame processing"),
    "stabilized_psnr_cost_db": ("<=", flicker_lib.TARGET_MAX_PSNR_COST_DB,
                                "masked-PSNR cost of stabilisation (dB)"),
    "mjpeg_client_fps": (">=", 20.0, "frames/s a plain HTTP client reads from the MJPEG stream"),
}


def ratio(value: float | None, baseline: float | None) -> dict[str, Any]:
    """{"value", "baseline", "ratio" = value / baseline} (ratio None where undefined)."""
    ok = (value is not None and baseline is not None and math.isfinite(value)
          and math.isfinite(baseline) and baseline != 0)
    return {"value": value, "baseline": baseline, "ratio": value / baseline if ok else None}


# ------------------------------------------------------------------------- comparisons, targets


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


# name in "comparisons" -> path in a model's record
MODEL_FIGURES = {
    "model_stage_p50_ms": ("model_stage", "p50_ms"),
    "model_stage_p95_ms": ("model_stage", "p95_ms"),
    "model_stage_faces_per_s": ("model_stage", "throughput", "faces_per_s"),
    "live_fps": ("live", "fps_out"),
    "live_latency_p50_ms": ("live", "latency_ms_p50"),
    "live_latency_p95_ms": ("live", "latency_ms_p95"),
    "live_dropped": ("live", "dropped"),
    "mjpeg_client_fps": ("live", "client", "fps"),
    "live_capacity_fps": ("live_capacity", "fps_out"),
    "infer_video_fps_jax": ("infer_video", "jax", "fps_processed"),
}


def comparisons(rec: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the peer measured in the same run.

    Every model against the baseline model, stabilised (and smoothed) processing against
    per-frame processing, every runtime against JAX; each {"value", "baseline", "ratio"}.
    """
    base_name = rec["baseline"]
    base = rec["models"][base_name]
    out: dict[str, Any] = {"models_vs_baseline": {}, "stabilized_vs_per_frame": {},
                           "runtimes_vs_jax": {}}
    for name, m in rec["models"].items():
        if name != base_name:
            c = {k: ratio(_get(m, *p), _get(base, *p)) for k, p in MODEL_FIGURES.items()}
            for v in (_get(m, "flicker", "variants") or {}):
                c[f"flicker_{v}"] = ratio(_get(m, "flicker", "variants", v, "flicker"),
                                          _get(base, "flicker", "variants", v, "flicker"))
                psnr = ratio(_get(m, "flicker", "variants", v, "masked_psnr"),
                             _get(base, "flicker", "variants", v, "masked_psnr"))
                psnr["diff_db"] = (psnr["value"] - psnr["baseline"]
                                   if psnr["ratio"] is not None else None)
                c[f"masked_psnr_{v}"] = psnr
            out["models_vs_baseline"][name] = c
        variants = _get(m, "flicker", "variants") or {}
        if "per_frame" in variants:
            pf = variants["per_frame"]
            per = {}
            for v, fv in variants.items():
                if v == "per_frame":
                    continue
                f = ratio(fv["flicker"], pf["flicker"])
                per[v] = {"flicker": f,
                          "flicker_reduction": 1.0 - f["ratio"] if f["ratio"] is not None else None,
                          "masked_psnr": {"value": fv["masked_psnr"], "baseline": pf["masked_psnr"]},
                          "masked_psnr_cost_db": pf["masked_psnr"] - fv["masked_psnr"]}
            out["stabilized_vs_per_frame"][name] = per
    for row in rec["runtimes"]:
        jx = row.get("jax", {})
        per = {}
        for rt in runtimes_lib.RUNTIMES:
            if rt == "jax" or rt not in row:
                continue
            per[rt] = {"latency_median_ms": ratio(row[rt]["median_ms"], jx.get("median_ms")),
                       "latency_p95_ms": ratio(row[rt]["p95_ms"], jx.get("p95_ms"))}
            if "throughput" in row[rt]:
                per[rt]["throughput_images_per_s"] = ratio(row[rt]["throughput"]["images_per_s"],
                                                           _get(jx, "throughput", "images_per_s"))
        out["runtimes_vs_jax"][row["key"]] = per
    return out


def targets(rec: dict[str, Any]) -> dict[str, Any]:
    """The live path's targets per model: {"value", "op", "target", "met", "what"}.

    "met" is None where the figure was not measured.
    """
    out = {}
    for name, m in rec["models"].items():
        stab = _get(rec, "comparisons", "stabilized_vs_per_frame", name, "stabilized") or {}
        values = {"model_stage_p50_ms": _get(m, "model_stage", "p50_ms"),
                  "live_fps": _get(m, "live", "fps_out"),
                  "flicker_reduction": stab.get("flicker_reduction"),
                  "stabilized_psnr_cost_db": stab.get("masked_psnr_cost_db"),
                  "mjpeg_client_fps": _get(m, "live", "client", "fps")}
        per = {}
        for key, (op, limit, what) in TARGETS.items():
            v = values[key]
            met = (None if v is None or not math.isfinite(v)
                   else bool(v <= limit if op == "<=" else v >= limit))
            per[key] = {"value": v, "op": op, "target": limit, "met": met, "what": what}
        out[name] = per
    return out


# ------------------------------------------------------------------------------------ reports


def _f(v: Any, fmt: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def markdown_report(rec: dict[str, Any]) -> str:
    """The main figures as Markdown tables (models side by side; runtimes against JAX)."""
    mach = rec["machine"]
    names = list(rec["models"])
    lines = [f"# Inference benchmark: {', '.join(names)} (baseline {rec['baseline']})", "",
             f"`{rec.get('command', 'python -m benchmarks.inference')}` on {mach['cpu_model']}, "
             f"{mach['cpu_cores_available']} cores, jax {mach['jax_version']}; 1-minute load "
             f"{_f(rec['load_average_1m']['start'])} at the start, "
             f"{_f(rec['load_average_1m']['end'])} at the end (a shared machine: compare figures taken at similar load); git "
             f"{rec['code']['git_head'][:10]}.", "",
             "## Models (issue 11)", "",
             "| | " + " | ".join(names) + " | target |",
             "|---|" + "---:|" * len(names) + "---|"]

    def row(label, cell, target=""):
        lines.append(f"| {label} | " + " | ".join(cell(n, rec["models"][n]) for n in names)
                     + f" | {target} |")

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f} %"

    stab = rec["comparisons"]["stabilized_vs_per_frame"]
    row("generator parameters", lambda n, m: f"{m['generator_params']:,}")
    row("model stage per face, p50 / p95 (ms)",
        lambda n, m: f"{_f(_get(m, 'model_stage', 'p50_ms'))} / "
                     f"{_f(_get(m, 'model_stage', 'p95_ms'))}",
        "p50 <= 15")
    row(f"model stage at batch {rec['settings']['tp_batch']} (faces/s)",
        lambda n, m: _f(_get(m, "model_stage", "throughput", "faces_per_s")))
    clip = next((m["live"]["clip"] for m in rec["models"].values() if "live" in m), None)
    where = f" ({clip['size'][0]}x{clip['size'][1]}, {clip['fps']:g} fps source)" if clip else ""
    row(f"live pipeline, frames/s out{where}", lambda n, m: _f(_get(m, "live", "fps_out")), ">= 25")
    row("capture-to-output latency p50 / p95 (ms)",
        lambda n, m: f"{_f(_get(m, 'live', 'latency_ms_p50'), '.0f')} / "
                     f"{_f(_get(m, 'live', 'latency_ms_p95'), '.0f')}")
    row("frames in / out / dropped (by reason)",
        lambda n, m: "–" if "live" not in m else
        f"{m['live']['frames_in']} / {m['live']['frames_out']} / {m['live']['dropped']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(m["live"]["dropped_by"].items())) + ")"
           if m["live"]["dropped_by"] else ""))
    row("MJPEG client, frames/s read", lambda n, m: _f(_get(m, "live", "client", "fps")), ">= 20")
    row("live pipeline unpaced, frames/s", lambda n, m: _f(_get(m, "live_capacity", "fps_out")))
    row("`infer` on the clip (JAX), frames/s",
        lambda n, m: _f(_get(m, "infer_video", "jax", "fps_processed")))
    row("flicker per-frame / stabilised (grey levels)",
        lambda n, m: f"{_f(_get(m, 'flicker', 'variants', 'per_frame', 'flicker'), '.2f')} / "
                     f"{_f(_get(m, 'flicker', 'variants', 'stabilized', 'flicker'), '.2f')}")
    row("flicker reduction by stabilisation",
        lambda n, m: pct(_get(stab, n, "stabilized", "flicker_reduction")), ">= 30 %")
    row("masked PSNR per-frame / stabilised (dB)",
        lambda n, m: f"{_f(_get(m, 'flicker', 'variants', 'per_frame', 'masked_psnr'), '.2f')} / "
                     f"{_f(_get(m, 'flicker', 'variants', 'stabilized', 'masked_psnr'), '.2f')}")
    row("masked-PSNR cost of stabilisation (dB)",
        lambda n, m: _f(_get(stab, n, "stabilized", "masked_psnr_cost_db"), ".2f"), "<= 0.3")

    if rec["runtimes"]:
        lines += ["", "## Runtimes (issue 12)", "",
                  "Batch-1 latency and throughput in turns on the same inputs; `vs JAX` = "
                  "median latency / JAX's.", "",
                  "| model @ px | runtime | convert s | MB | max diff | b1 median / p95 ms | "
                  f"img/s at batch {rec['settings']['tp_batch']} | latency vs JAX |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rec["runtimes"]:
            vs = rec["comparisons"]["runtimes_vs_jax"][r["key"]]
            for rt in runtimes_lib.RUNTIMES:
                if rt not in r:
                    continue
                x = r[rt]
                lines.append(
                    f"| {r['key']} | {rt} | {_f(x.get('convert_s'))} | {_f(x.get('file_mb'))} | "
                    f"{x.get('max_abs_diff_vs_jax', '–')} | "
                    f"{_f(x['median_ms'])} / {_f(x['p95_ms'])} | "
                    f"{_f(_get(x, 'throughput', 'images_per_s'))} | "
                    f"{_f(_get(vs, rt, 'latency_median_ms', 'ratio'), '.2f')} |")
    return "\n".join(lines) + "\n"


def summary_line(rec: dict[str, Any]) -> str:
    parts = []
    for name, m in rec["models"].items():
        s = f"{name}: model {_f(_get(m, 'model_stage', 'p50_ms'))} ms/face"
        if "live" in m:
            s += (f", live {_f(m['live']['fps_out'])} fps "
                  f"(p95 {_f(m['live']['latency_ms_p95'], '.0f')} ms, "
                  f"client {_f(_get(m, 'live', 'client', 'fps'))} fps)")
        parts.append(s)
    return ("inference: " + "; ".join(parts)
            + f" [{rec['machine']['cpu_model']}, {rec['machine']['cpu_cores_available']} cores, "
              f"load {_f(rec['load_average_1m']['start'])}]")
