"""grain input: ArrayRecord shards -> decoded, augmented, per-process batches.

Determinism is by construction: every element is a pure function of its
global index (grain's shuffle and random_map are seeded by index), so the
iterator state is just a position and resuming from a checkpoint replays
exactly the same batches. Thread count does not change the data.

Per-process sharding keeps global batches identical for any process count:
global batch k is elements [k*B, (k+1)*B) of the shuffled stream, and process
p of n loads rows [p*B/n, (p+1)*B/n) of it, which is exactly the slice that
`jax.make_array_from_process_local_data` places on that process's devices.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np

from deocc_jax.data import features

IMAGE_KEYS = ("clean", "occluded", "mask", "alpha")


def check_dataset(config: ml_collections.ConfigDict, split: str) -> list[str]:
    """Shard paths of `split`, after checking the data matches the config.

    Raises:
      FileNotFoundError: data_dir, dataset_info.json or the shards are missing.
      ValueError: the config's resolution differs from the dataset's.
    """
    paths = features.list_shards(config.data_dir, split, "array_record")
    info = features.read_dataset_info(config.data_dir)
    if int(info["resolution"]) != int(config.resolution):
        raise ValueError(
            f"config.resolution={config.resolution} but the dataset in {config.data_dir!r} was "
            f"prepared at {info['resolution']} px (dataset_info.json); set "
            f"--config.resolution={info['resolution']} or prepare data at {config.resolution} px")
    return paths


def _decode(serialized: bytes, source: str) -> dict[str, np.ndarray]:
    ex = features.decode_example(serialized, source)
    return {k: ex[k] for k in IMAGE_KEYS}


def augment(example: dict[str, np.ndarray], rng: np.random.Generator, *, flip_prob: float,
            color_jitter: float, clean_prob: float = 0.0) -> dict[str, np.ndarray]:
    """Same random flip and colour jitter on clean, occluded, mask and alpha.

    With probability `clean_prob` the pair becomes an unoccluded one (occluded = clean,
    mask = alpha = 0): most frames of a call show nothing over the face, and a model that
    never saw such a pair paints over eyes and mouths that needed nothing. The draw comes
    after the others, so `clean_prob=0` leaves every other config's random stream as it was.

    The colour jitter is a per-pixel function of the pixel value (brightness,
    contrast around mid-grey, saturation around the pixel's own luma), applied
    identically to both images, so `clean == occluded` outside the mask still
    holds afterwards.
    """
    flip = rng.random() < flip_prob
    b, c, s = rng.uniform(-1.0, 1.0, size=3) * color_jitter
    out = {k: (v[:, ::-1] if flip else v) for k, v in example.items()}
    if clean_prob > 0 and rng.random() < clean_prob:
        out["occluded"] = out["clean"]
        out["mask"] = np.zeros_like(out["mask"])
        out["alpha"] = np.zeros_like(out["alpha"])
    if color_jitter > 0:
        for k in ("clean", "occluded"):
            x = out[k].astype(np.float32) / 255.0
            x = (x - 0.5) * (1.0 + c) + 0.5 + b
            luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
            x = luma[..., None] + (x - luma[..., None]) * (1.0 + s)
            out[k] = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _process_slice(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        return jax.process_index(), jax.process_count()
    return process_index, process_count


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"batch_size={global_batch} is not divisible by the process count "
                         f"{process_count}")
    return global_batch // process_count


def _read_options(config: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=int(config.data.get("num_threads", 2)),
                             prefetch_buffer_size=int(config.data.get("prefetch_buffer_size", 4)))


def make_train_iterator(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
    """Infinite, checkpointable iterator of this process's slice of each global batch.

    Elements are dicts of uint8 numpy arrays: clean/occluded [b, H, W, 3],
    mask/alpha [b, H, W, 1] (0..255), with b = batch_size / process_count.
    Epochs are reshuffled (grain folds the epoch into the seed).
    """
    p, n = _process_slice(process_index, process_count)
    b = _local_batch(config.batch_size, n)
    big_b = config.batch_size
    paths = check_dataset(config, "train")
    source = f"{config.data_dir}/train"
    ds = (grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
          .shuffle(seed=config.seed)
          .map(lambda r: _decode(r, source))
          .random_map(lambda ex, rng: augment(ex, rng, flip_prob=config.data.flip_prob,
                                              color_jitter=config.data.color_jitter,
                                              clean_prob=config.data.get("clean_prob", 0.0)),
                      seed=config.seed + 1)
          .repeat(None))

    def global_index(j: int) -> int:
        return (j // b) * big_b + p * b + j % b

    local = grain.MapDataset.range(sys.maxsize).map(lambda j: ds[global_index(j)])
    return iter(local.batch(b, drop_remainder=True).to_iter_dataset(_read_options(config)))


def _eval_source(data_dir: str, split: str) -> grain.MapDataset:
    return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(
        features.list_shards(data_dir, split, "array_record")))


def split_size(data_dir: str, split: str) -> int:
    """Number of records in a split."""
    return len(_eval_source(data_dir, split))


def read_examples(data_dir: str, split: str, indices: list[int]) -> list[dict[str, Any]]:
    """Decoded records at the given positions of a split (file order), all fields."""
    ds = _eval_source(data_dir, split)
    return [features.decode_example(ds[i], f"{data_dir}/{split}[{i}]") for i in indices]


def subset_positions(size: int, num_examples: int | None) -> np.ndarray:
    """Positions of `num_examples` records spread evenly over a split of `size` (all when None)."""
    if num_examples is None or num_examples >= size:
        return np.arange(size)
    return np.unique(np.linspace(0, size - 1, max(num_examples, 1)).round().astype(np.int64))


def make_eval_iterator(data_dir: str, split: str, batch_size: int, *,
                       num_examples: int | None = None, num_threads: int = 2,
                       prefetch_buffer_size: int = 4, process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[dict[str, Any]]:
    """One pass over `split` in file order, no augmentation, in fixed-size global batches.

    Each element is this process's rows of a global batch: uint8 "clean",
    "occluded" [b, H, W, 3] and "mask" [b, H, W, 1], "index" (int64 position in
    the split), "category" (str) and "valid" (float32, 0 for the padding that
    fills the last batch with copies of the first example).

    Args:
      data_dir: prepared dataset.
      split: dataset split name.
      batch_size: global batch size.
      num_examples: evaluate n examples spread evenly over the split (all when
        None): shards are sorted by record key, so the first n would come from
        few sources.
      num_threads, prefetch_buffer_size: grain read options.
      process_index, process_count: override jax's (tests).
    """
    p, n = _process_slice(process_index, process_count)
    b = _local_batch(batch_size, n)
    ds = _eval_source(data_dir, split)
    source = f"{data_dir}/{split}"
    positions = subset_positions(len(ds), num_examples)
    total = len(positions)
    num_batches = -(-total // batch_size)

    def element(j: int) -> dict[str, Any]:
        g = (j // b) * batch_size + p * b + j % b
        i = int(positions[g if g < total else 0])
        ex = features.decode_example(ds[i], f"{source}[{i}]")
        out = {k: ex[k] for k in ("clean", "occluded", "mask")}
        out.update(valid=np.float32(g < total), index=np.int64(i), category=np.str_(ex["category"]))
        return out

    local = grain.MapDataset.range(num_batches * b).map(element)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return iter(local.batch(b).to_iter_dataset(options))
