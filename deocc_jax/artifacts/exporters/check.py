"""Checks an exported model against the JAX model it came from, in any runtime.

Every exporter's output is loaded by its own runtime (TensorFlow, onnxruntime,
LiteRT) and compared with JAX on real aligned face photos at several batch
sizes before the export is reported; a runner is anything with
`__call__(images, masks) -> {"deoccluded", "mask"}`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

# How closely a reloaded float32 export must reproduce the JAX model. Both run
# the same maths, but another runtime may fuse and order float ops differently,
# so a value that lands on a .5 rounding boundary can come out one grey level apart.
TOLERANCE = {
    "deoccluded_max_abs": 1,        # uint8 levels, any pixel
    "deoccluded_frac_differing": 0.01,  # at most 1% of values may differ at all
    "mask_max_abs": 1e-4,           # float32 mask in [0, 1]
}


class ExportCheckError(RuntimeError):
    """The reloaded export does not reproduce the JAX model."""


def compare_outputs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Differences between two model outputs, in the units of TOLERANCE."""
    g, w = np.asarray(got["deoccluded"]), np.asarray(want["deoccluded"])
    if g.shape != w.shape or g.dtype != np.uint8 or w.dtype != np.uint8:
        raise ExportCheckError(f"deoccluded: got {g.dtype}{g.shape}, want {w.dtype}{w.shape}")
    gm, wm = np.asarray(got["mask"]), np.asarray(want["mask"])
    if gm.shape != wm.shape or gm.dtype != np.float32:
        raise ExportCheckError(f"mask: got {gm.dtype}{gm.shape}, want {wm.dtype}{wm.shape}")
    diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
    return {"deoccluded_max_abs": int(diff.max()),
            "deoccluded_frac_differing": float((diff > 0).mean()),
            "mask_max_abs": float(np.abs(gm - wm).max())}


def within_tolerance(diffs: Mapping[str, float],
                     tolerance: Mapping[str, float] = TOLERANCE) -> bool:
    return all(diffs[k] <= tolerance[k] for k in tolerance)


def verify_runner(runner: Callable[..., Mapping[str, Any]],
                  reference_fn: Callable[..., Mapping[str, Any]], images: np.ndarray,
                  masks: np.ndarray | None, batch_sizes: tuple[int, ...] = (1, 3),
                  tolerance: Mapping[str, float] = TOLERANCE) -> dict[str, Any]:
    """Compares an export's runner with the JAX model on `images`.

    Args:
      runner: the export loaded in its own runtime (e.g. SavedModelRunner).
      reference_fn: `reference_fn(images, masks)` running the JAX model.
      images: uint8 [N, R, R, 3] real face crops; batches are cut from them,
        cycling when N is smaller than a batch size.
      masks: uint8 [N, R, R, 1] for guided models, else None.
      batch_sizes: batch sizes to check (any batch size must work).
      tolerance: limits on `compare_outputs`'s differences.

    Returns:
      {"tolerance": tolerance, "batches": {size: diffs}}.

    Raises:
      ExportCheckError: some batch exceeds the tolerance.
    """
    results = {}
    for b in batch_sizes:
        idx = np.arange(b) % len(images)
        m = None if masks is None else masks[idx]
        diffs = compare_outputs(runner(images[idx], m),
                                {k: np.asarray(v) for k, v in reference_fn(images[idx], m).items()})
        results[str(b)] = diffs
        if not within_tolerance(diffs, tolerance):
            raise ExportCheckError(
                f"{getattr(runner, 'description', 'the export')} differs from the JAX model at "
                f"batch size {b}: {diffs} exceeds tolerance {dict(tolerance)}")
    return {"tolerance": dict(tolerance), "batches": results}


def check_masks(n: int, resolution: int) -> np.ndarray:
    """uint8 [n, R, R, 1] masks over the lower face (mouth and chin) of aligned crops.

    Used to exercise guided models in the self-check; any mask would do, this
    one looks like a face mask in the training template.
    """
    m = np.zeros((n, resolution, resolution, 1), np.uint8)
    r = resolution
    m[:, int(0.58 * r):int(0.88 * r), int(0.25 * r):int(0.75 * r)] = 255
    return m


