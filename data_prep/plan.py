"""Groups, splits and shards: the plan every record of a build follows (pure functions).

Groups are the people named by --group_by, merged with near-duplicate photos
(`descriptor`, `near_duplicate_pairs`, `merge_groups`); splits are drawn by a
hash of each group, shards by a hash of each record key. `make_plan` makes the
one `Plan` the pipeline shares as a side input.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from data_prep.config import PrepConfig


# ----------------------------------------------------------------------------
# Splits and shards (pure functions).
# ----------------------------------------------------------------------------

def _id_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_thresholds(group_ids: Sequence[str],
                     splits: Sequence[tuple[str, float]]) -> list[tuple[int, str]]:
    """Hash boundaries that give each split its share of these groups.

    Groups are ordered by sha256 and cut at the split fractions (largest
    remainder), giving each split with a non-zero fraction at least one group
    when there are enough. A group's split is then a function of its own hash
    and these boundaries, so every photo (variant, face) of a person lands in
    the same split. The seed does not enter: the test set stays fixed across
    seeds.

    Returns:
      [(upper hash bound exclusive, split name)] in ascending order.
    """
    hashes = sorted({_id_hash(s) for s in group_ids})
    n = len(hashes)
    fr = np.array([f for _, f in splits], np.float64)
    counts = np.floor(fr * n).astype(int)
    for i in np.argsort(-(fr * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # Tiny datasets: move one group into each empty split that asked for some.
    for i in range(len(splits)):
        if fr[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    out, pos = [], 0
    for (name, _), c in zip(splits, counts):
        pos += int(c)
        bound = hashes[pos] if pos < n else 2 ** 64
        out.append((bound, name))
    return out


def split_of(group_id: str, thresholds: Sequence[tuple[int, str]]) -> str:
    h = _id_hash(group_id)
    for bound, name in thresholds:
        if h < bound:
            return name
    return thresholds[-1][1]


def records_per_shard(resolution: int) -> int:
    """About 128 MiB per shard (a record is roughly 6 bytes per crop pixel)."""
    return int(np.clip((128 << 20) // (resolution * resolution * 6), 64, 10000))


def shard_of(record_key: str, num_shards: int) -> int:
    return _id_hash("shard:" + record_key) % num_shards


def record_key(source_id: str, variant: int) -> str:
    return f"{source_id}\x00{variant:06d}"


# ----------------------------------------------------------------------------
# Groups: named persons merged with near-duplicate photos.
# ----------------------------------------------------------------------------

DESCRIPTOR_SIZE = 48


def descriptor(clean: np.ndarray) -> np.ndarray:
    """float16 [32*32]: a band-pass thumbnail of the aligned face's centre, unit norm.

    Aligned crops of the same photo (re-saved, rescaled, recoloured, noised,
    rotated or mirrored before alignment) are nearly equal here; band-pass
    (difference of Gaussians) drops lighting and noise but keeps the face's
    structure. Measured on the shared sets: copies mostly above 0.97, no pair
    of LFW faces above 0.93, a few similar-looking UTKFace people at 0.93-0.95
    (see data_prep/README.md).
    """
    g = cv2.cvtColor(cv2.resize(clean, (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA),
                     cv2.COLOR_RGB2GRAY).astype(np.float32)
    band = cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 4.0)
    c = band[8:40, 8:40]
    c = c - c.mean()
    return (c / max(float(np.linalg.norm(c)), 1e-6)).reshape(-1).astype(np.float16)


def near_duplicate_pairs(descriptors: np.ndarray, threshold: float, block: int = 2048
                         ) -> list[tuple[int, int]]:
    """(i, j), i < j, of faces whose descriptors (or one's mirror image) correlate > threshold."""
    d = np.asarray(descriptors, np.float32)
    n = len(d)
    side = int(round(math.sqrt(d.shape[1]))) if n else 0
    mirrored = d.reshape(n, side, side)[:, :, ::-1].reshape(n, -1) if n else d
    out = []
    for a in range(0, n, block):
        sim = np.maximum(d[a:a + block] @ d.T, d[a:a + block] @ mirrored.T)
        ii, jj = np.nonzero(sim > threshold)
        out += [(a + i, j) for i, j in zip(ii.tolist(), jj.tolist()) if a + i < j]
    return out


def merge_groups(keys: Sequence[str], groups: Sequence[str], pairs: Iterable[tuple[int, int]]
                 ) -> dict[str, str]:
    """key -> final group: faces of one named group, or linked by a pair, are one group.

    A final group is named by its smallest member group (deterministic).
    """
    parent = {g: g for g in groups}

    def find(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for i, j in pairs:
        a, b = find(groups[i]), find(groups[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {k: find(g) for k, g in zip(keys, groups)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where each face goes: computed once from every accepted face.

    Attributes:
      group_of: record source -> final group.
      thresholds: split boundaries over the final groups.
      shards: split -> number of shards.
      stats: group statistics for dataset_info.json.
      records: split -> records the accepted faces must produce (checked at the end).
    """
    group_of: dict[str, str]
    thresholds: list[tuple[int, str]]
    shards: dict[str, int]
    stats: dict[str, Any]
    records: dict[str, int] = dataclasses.field(default_factory=dict)

    def split(self, record_source: str) -> str:
        return split_of(self.group_of[record_source], self.thresholds)


def make_plan(entries: Sequence[tuple[str, str, np.ndarray, int]], config: PrepConfig,
              num_shards: int | None) -> Plan:
    """Plan from [(record source, named group, descriptor, records)] of every accepted face."""
    entries = sorted(entries, key=lambda e: e[0])
    keys = [e[0] for e in entries]
    named = [e[1] for e in entries]
    pairs = []
    if config.near_duplicates > 0 and entries:
        pairs = near_duplicate_pairs(np.stack([e[2] for e in entries]), config.near_duplicates)
    group_of = merge_groups(keys, named, pairs)
    finals = sorted(set(group_of.values()))
    thresholds = split_thresholds(finals, config.splits) if finals else [(2 ** 64, config.splits[0][0])]
    per_split: dict[str, int] = collections.Counter()
    for (key, _, _, n) in entries:
        per_split[split_of(group_of[key], thresholds)] += n
    shards = {name: int(num_shards) if num_shards else
              max(1, math.ceil(per_split.get(name, 0) / records_per_shard(config.resolution)))
              for name, _ in config.splits}
    sizes = collections.Counter(group_of.values())
    photos_per_named = collections.Counter(named)
    stats = {
        "faces": len(keys),
        "groups": len(finals),
        "groups_with_several_faces": sum(1 for v in sizes.values() if v > 1),
        "largest_group": max(sizes.values(), default=0),
        "named_groups_with_several_faces": sum(1 for v in photos_per_named.values() if v > 1),
        "near_duplicate_pairs": len(pairs),
        "groups_per_split": dict(sorted(collections.Counter(
            split_of(g, thresholds) for g in finals).items())),
    }
    return Plan(group_of=group_of, thresholds=thresholds, shards=shards, stats=stats,
                records=dict(per_split))
