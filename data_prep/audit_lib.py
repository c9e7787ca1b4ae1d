"""Which photos data prep would accept, and why not, without building a dataset.

The library of `python -m data_prep.audit`: `audit` runs the pipeline's first stage
(`alignment.AlignFacesFn`) on every photo and counts, per input folder, the faces and the
reasons for rejection, with the accept rate at other `max_padding` values, the padding and
head-pose distributions and the near-duplicate pairs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
from typing import Any, Sequence

import apache_beam as beam
import numpy as np

from data_prep import alignment, plan, sources
from data_prep.config import PrepConfig
from deocc_jax.faces import landmarks as L

PADDING_STEPS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)

_fn: alignment.AlignFacesFn | None = None


def _start(config: PrepConfig) -> None:
    global _fn
    _fn = alignment.AlignFacesFn(config)
    _fn.setup()


def _one(source: sources.Source) -> dict[str, Any]:
    """The outcome for one photo: its reason, or its largest face's padding and pose."""
    for out in _fn.process(source):
        if isinstance(out, beam.pvalue.TaggedOutput):
            if out.tag == alignment.AlignFacesFn.REJECTED:
                return {"id": source.source_id, "reason": out.value[2], "detail": out.value[3]}
        elif isinstance(out, alignment.AlignedFace):
            pose = L.head_pose(out.landmarks, _fn.canonical)
            return {"id": source.source_id, "padding": out.padding_fraction,
                    "yaw": pose.yaw, "pitch": pose.pitch, "error": pose.error,
                    "descriptor": out.descriptor}
    raise RuntimeError(f"{source.source_id}: neither accepted nor rejected")


def audit(inputs: Sequence[str], config: PrepConfig, workers: int = 1) -> dict[str, Any]:
    """Accept rates and rejection reasons of `inputs` under `config`, per input folder.

    Faces are checked with every threshold but --max_padding open, so that the
    accept rate at any --max_padding follows exactly from the recorded padding.
    """
    found, skipped = sources.list_sources(inputs, config.group_by)
    if config.clean_dir:
        found, unpaired, _ = sources.pair_sources(found, config.clean_dir, config.group_by)
        skipped += unpaired
    open_config = dataclasses.replace(config, max_padding=0.999)
    t0 = time.time()
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers, initializer=_start,
                                                    initargs=(open_config,)) as ex:
            results = list(ex.map(_one, found, chunksize=16))
    else:
        _start(open_config)
        results = [_one(s) for s in found]
    seconds = time.time() - t0
    results += [{"id": s.source_id, "reason": s.reason, "detail": s.detail} for s in skipped]
    prefixes = sources.input_prefixes(list(inputs))
    report: dict[str, Any] = {"seconds": round(seconds, 1),
                              "photos_per_second": round(len(found) / max(seconds, 1e-9), 2),
                              "inputs": {}}
    faces = [r for r in results if "descriptor" in r]
    pairs = (plan.near_duplicate_pairs(np.stack([r["descriptor"] for r in faces]),
                                       config.near_duplicates)
             if faces and config.near_duplicates > 0 else [])
    groups = plan.merge_groups([r["id"] for r in faces], [r["id"] for r in faces], pairs)
    sizes = collections.Counter(groups.values())
    def source(i: int) -> str:
        return next((p for p in prefixes if p and faces[i]["id"].startswith(p)), "") or "input"

    low = (plan.near_duplicate_pairs(np.stack([r["descriptor"] for r in faces]), 0.9)
           if faces else [])
    descriptors = np.stack([r["descriptor"] for r in faces]).astype(np.float32) if faces else None

    def similarity(i: int, j: int) -> float:
        a, b = descriptors[i], descriptors[j]
        side = int(round(len(a) ** 0.5))
        return float(max(a @ b, a @ b.reshape(side, side)[:, ::-1].reshape(-1)))

    sims = [similarity(i, j) for i, j in low]
    report["near_duplicates"] = {
        "threshold": config.near_duplicates, "pairs": len(pairs),
        "pairs_by_source": dict(sorted(collections.Counter(
            "+".join(sorted({source(i), source(j)})) for i, j in pairs).items())),
        "pairs_above": {f"{t:g}": int(sum(s > t for s in sims)) for t in (0.9, 0.93, 0.95, 0.97, 0.99)},
        "faces_in_groups": sum(n for n in sizes.values() if n > 1),
        "largest_group": max(sizes.values(), default=0),
        "examples": [(faces[i]["id"], faces[j]["id"], round(similarity(i, j), 3)) for i, j in pairs[:10]],
    }
    for spec, prefix in zip(inputs, prefixes):
        mine = [r for r in results if r["id"].startswith(prefix)]
        padding = np.array([r["padding"] for r in mine if "padding" in r])
        reasons = collections.Counter(r["reason"] for r in mine if "reason" in r)
        over = int((padding > config.max_padding).sum())
        if over:
            reasons[alignment.INSUFFICIENT_CONTEXT] += over
        accepted = len(padding) - over
        q = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
        yaw = np.abs([r["yaw"] for r in mine if "yaw" in r])
        report["inputs"][spec] = {
            "read": len(mine),
            "accepted": accepted,
            "accept_rate": round(accepted / max(len(mine), 1), 4),
            "rejected": dict(sorted(reasons.items())),
            "accept_rate_at_max_padding": {
                f"{t:g}": round(int((padding <= t).sum()) / max(len(mine), 1), 4) for t in PADDING_STEPS},
            "padding_quantiles": dict(zip(map(str, q), np.round(np.quantile(padding, q), 3).tolist()))
            if len(padding) else {},
            "abs_yaw_quantiles": dict(zip(map(str, q), np.round(np.quantile(yaw, q), 1).tolist()))
            if len(yaw) else {},
            "examples": {reason: [r["id"] for r in mine if r.get("reason") == reason][:3]
                         + ([r["id"] for r in mine if r.get("padding", 0) > config.max_padding][:3]
                            if reason == alignment.INSUFFICIENT_CONTEXT else [])
                         for reason in sorted(reasons)},
        }
    return report
