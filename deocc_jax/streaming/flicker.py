"""Flicker of restored video, measured on clips whose truth is known (`streaming.clips`).

    flicker = mean over consecutive frames (t-1, t) and over the pixels
              occluded in both of |(out_t - out_t-1) - (clean_t - clean_t-1)|

in grey levels (0-255, averaged over RGB): the part of the output's change
from frame to frame that the true motion does not explain. Masked PSNR is the
PSNR over the occluded pixels of all frames (one pooled MSE).

`measure_flicker` runs a model over clips with several processing variants
(per-frame, landmark smoothing, temporal stabilisation) and reports both
figures per variant and the change against per-frame processing;
`measure_tracking` compares landmark trackers on the same clips. The
benchmark (`benchmarks/inference.py`) calls them; so does
`python -m benchmarks.flicker --model=...`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from deocc_jax.faces import landmarks as lmk
from deocc_jax.restoration import frames as restore
from deocc_jax.streaming.clips import MOTIONS, Clip, standard_clips  # noqa: F401 (re-exported)
from deocc_jax.restoration.stabilize import StabilizerOptions, TemporalStabilizer
from deocc_jax.streaming.tracking import LandmarkTracker, TrackerOptions

# The processing variants compared (tracker options, stabiliser options).
VARIANTS: dict[str, tuple[TrackerOptions, StabilizerOptions | None]] = {
    # Every frame on its own: MediaPipe landmarks as found, no smoothing of any kind.
    "per_frame": (TrackerOptions(method="mediapipe", smoothing=False), None),
    # `infer`'s video path: MediaPipe landmarks with one-euro smoothing.
    "landmark_smoothing": (TrackerOptions(method="mediapipe", smoothing=True), None),
    # `live`'s default: flow tracking between keyframes, one-euro, temporal stabilisation.
    "stabilized": (TrackerOptions(), StabilizerOptions()),
}
# The flicker reduction wanted of the stabilised variant against per-frame processing.
TARGET_FLICKER_REDUCTION = 0.30
TARGET_MAX_PSNR_COST_DB = 0.3


def flicker(outputs: np.ndarray, clean: np.ndarray, region: np.ndarray) -> float:
    """Mean |Δoutput - Δclean| over pixels occluded in both frames of each consecutive pair."""
    o = outputs.astype(np.float32)
    c = clean.astype(np.float32)
    excess = np.abs((o[1:] - o[:-1]) - (c[1:] - c[:-1])).mean(-1)
    both = region[1:] & region[:-1]
    return float(excess[both].mean()) if both.any() else float("nan")


def masked_psnr(outputs: np.ndarray, clean: np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB, peak 255) over the occluded pixels of all frames."""
    err = (outputs.astype(np.float32) - clean.astype(np.float32)) ** 2
    mse = float(err[region].mean()) if region.any() else float("nan")
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def process_clip(model, clip: Clip, tracker: TrackerOptions, stabilizer: StabilizerOptions | None,
                 guided_truth: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Runs the video path (tracker, model, optional stabiliser) over a clip, frame by frame.

    Args:
      model: a Predictor.
      clip: the clip.
      tracker, stabilizer: the variant.
      guided_truth: give a guided model each frame's true occluder region.

    Returns:
      (uint8 [T, H, W, 3] outputs, {"ms_per_frame", "faces_per_frame"}).
    """
    stab = TemporalStabilizer(stabilizer) if stabilizer is not None else None
    outs, faces = [], 0
    start = time.perf_counter()
    with LandmarkTracker(tracker) as track:
        for t in range(len(clip)):
            time_s = t / clip.fps
            lms = track(clip.occluded[t], time_s)
            guide = restore.GuideMask.from_array(clip.region[t]) if guided_truth else None
            outs.append(restore.restore_frame(clip.occluded[t], lms, model, stabilizer=stab,
                                              time_s=time_s, guide=guide).image)
            faces += len(lms)
    elapsed = time.perf_counter() - start
    return np.stack(outs), {"ms_per_frame": 1000.0 * elapsed / len(clip),
                            "faces_per_frame": faces / len(clip)}


def _summary(per_clip: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([p[k] for p in per_clip]))
            for k in ("flicker", "masked_psnr", "static_output_flicker", "ms_per_frame",
                      "faces_per_frame")}


def measure_flicker(model, clips: Sequence[Clip],
                    variants: dict[str, tuple[TrackerOptions, StabilizerOptions | None]] | None = None,
                    baseline: str = "per_frame") -> dict[str, Any]:
    """Flicker and masked PSNR of each processing variant, over clips.

    Each figure is also given per motion label of the clips ("by_motion").
    `static_output_flicker` is what an output that never changes would score
    on the same pixels (|Δclean|): the part of the flicker that comes from the
    restoration not following the moving true texture, which no temporal
    method can remove; a variant can only remove what lies above it.

    Args:
      model: a Predictor (a guided one gets the true region).
      clips: clips from `make_clip` / `standard_clips`.
      variants: name -> (TrackerOptions, StabilizerOptions or None); default VARIANTS.
      baseline: the variant the others are compared with.

    Returns:
      {"model", "clips": [{"name", "motion", "frames"}], "variants": {name: {"flicker",
      "masked_psnr", "static_output_flicker", "ms_per_frame", "faces_per_frame",
      "by_motion": {motion: {...}}, "per_clip": [...]}}, "vs_<baseline>": {name:
      {"flicker_reduction", "psnr_cost_db", "by_motion": {motion: {...}}}},
      "target": {...}, "meets_target": {"all" | motion: bool} (for "stabilized")}.
      Means over clips are of the per-clip figures.
    """
    variants = variants or VARIANTS
    motions = list(dict.fromkeys(c.motion for c in clips))
    result: dict[str, Any] = {
        "model": getattr(model, "description", type(model).__name__),
        "clips": [{"name": c.name, "motion": c.motion, "frames": len(c)} for c in clips],
        "variants": {}}
    statics = [flicker(np.repeat(c.clean[:1], len(c), 0), c.clean, c.region) for c in clips]
    for name, (tracker, stab) in variants.items():
        per_clip = []
        for clip, static in zip(clips, statics):
            outs, info = process_clip(model, clip, tracker, stab, guided_truth=model.guided)
            per_clip.append({"clip": clip.name, "motion": clip.motion,
                             "flicker": flicker(outs, clip.clean, clip.region),
                             "masked_psnr": masked_psnr(outs, clip.clean, clip.region),
                             "static_output_flicker": static, **info})
        entry = _summary(per_clip)
        entry["by_motion"] = {m: _summary([p for p in per_clip if p["motion"] == m]) for m in motions}
        entry["per_clip"] = per_clip
        result["variants"][name] = entry

    def compare(v: dict[str, float], base: dict[str, float]) -> dict[str, float]:
        return {"flicker_reduction": (1.0 - v["flicker"] / base["flicker"]) if base["flicker"] > 0
                else float("nan"),
                "psnr_cost_db": base["masked_psnr"] - v["masked_psnr"]}

    if baseline in result["variants"]:
        base = result["variants"][baseline]
        result[f"vs_{baseline}"] = {
            name: {**compare(v, base),
                   "by_motion": {m: compare(v["by_motion"][m], base["by_motion"][m]) for m in motions}}
            for name, v in result["variants"].items() if name != baseline}
        got = result[f"vs_{baseline}"].get("stabilized")
        if got is not None:
            meets = lambda g: bool(g["flicker_reduction"] >= TARGET_FLICKER_REDUCTION  # noqa: E731
                                   and g["psnr_cost_db"] <= TARGET_MAX_PSNR_COST_DB)
            result["target"] = {"flicker_reduction_min": TARGET_FLICKER_REDUCTION,
                                "psnr_cost_db_max": TARGET_MAX_PSNR_COST_DB}
            result["meets_target"] = {"all": meets(got),
                                      **{m: meets(got["by_motion"][m]) for m in motions}}
    return result


def measure_tracking(clips: Sequence[Clip], methods: dict[str, TrackerOptions] | None = None
                     ) -> dict[str, dict[str, float]]:
    """Time per frame, error and jitter of landmark trackers against the true landmarks.

    error = mean |landmark - truth| (px; includes the landmarker's own bias on
    an occluded face); jitter = mean |Δlandmark - Δtruth| between consecutive
    frames (px), over the 5 alignment points (what moves the crop).

    Args:
      clips: clips from `make_clip` (their `landmarks` are the truth).
      methods: name -> TrackerOptions; default: MediaPipe VIDEO mode on every
        frame, and flow with a keyframe every 2, 5 and 10 frames; each with and
        without one-euro smoothing.
    """
    if methods is None:
        methods = {}
        for smooth in (False, True):
            tag = "+one_euro" if smooth else ""
            methods[f"mediapipe{tag}"] = TrackerOptions(method="mediapipe", smoothing=smooth)
            for k in (2, 5, 10):
                methods[f"flow_k{k}{tag}"] = TrackerOptions(method="flow", detect_every=k,
                                                            smoothing=smooth)
    result = {}
    for name, opts in methods.items():
        times, errs, jits, keys, n = [], [], [], 0, 0
        for clip in clips:
            with LandmarkTracker(opts) as track:
                pred = []
                for t in range(len(clip)):
                    start = time.perf_counter()
                    lms = track(clip.occluded[t], t / clip.fps)
                    times.append(time.perf_counter() - start)
                    pred.append(lms[0] if lms else None)
                keys += track.keyframes
                n += len(clip)
            five = lambda a: lmk.five_points(a)  # noqa: E731
            for t in range(len(clip)):
                if pred[t] is None:
                    continue
                errs.append(np.abs(five(pred[t]) - five(clip.landmarks[t])).mean())
                if t and pred[t - 1] is not None:
                    d = (five(pred[t]) - five(pred[t - 1])) - (five(clip.landmarks[t])
                                                               - five(clip.landmarks[t - 1]))
                    jits.append(np.abs(d).mean())
        result[name] = {"ms_per_frame": 1000.0 * float(np.mean(times)),
                        "error_px": float(np.mean(errs)) if errs else float("nan"),
                        "jitter_px": float(np.mean(jits)) if jits else float("nan"),
                        "found_fraction": len(errs) / max(n, 1),
                        "keyframe_fraction": keys / max(n, 1)}
    return result
