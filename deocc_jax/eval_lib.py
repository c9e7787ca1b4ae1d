"""Evaluation of trained models and baselines on a prepared split.

One pass over the split computes, for every method, the per-image metrics of
`deocc_jax.metrics.image_metrics` (whole image and inside the true occluder
mask, plus predicted-mask IoU for blind models) with a jitted function whose
batch is sharded over every device (`Mesh` + `NamedSharding`). Per-image values
are then averaged overall and per occluder category on the host.

Methods compared on the same examples:
  model                 the workdir's checkpoint
  compare:<name>        any other workdirs (`--compare`)
  occluded_input        the input itself (what doing nothing scores)
  opencv_telea, opencv_ns  OpenCV inpainting given the true mask

Conventions: images are scaled to [0, 1] (so MSE is in [0, 1]^2 units and
PSNR uses a peak of 1); each number is the mean over examples of the per-image
value; occluded-region metrics average over examples whose mask is non-empty.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from deocc_jax import baselines, metrics
from deocc_jax.data import features

METRIC_KEYS = ("psnr", "ssim", "mse", "masked_psnr", "masked_ssim", "masked_mse", "mask_iou")
METRIC_LABELS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "mse": "MSE",
    "masked_psnr": "PSNR occl. (dB)", "masked_ssim": "SSIM occl.", "masked_mse": "MSE occl.",
    "mask_iou": "mask IoU",
}
METRIC_NOTES = {
    "scale": "images in [0, 1]; PSNR peak 1; MSE in [0,1]^2 units",
    "aggregation": "mean over examples of the per-image value",
    "psnr/ssim/mse": "whole image vs the clean face",
    "masked_*": "inside the true occluder mask only; averaged over examples with a non-empty mask",
    "ssim": "Gaussian window sigma 1.5, as skimage.metrics.structural_similarity("
            "gaussian_weights=True, channel_axis=-1, data_range=1)",
    "mask_iou": "IoU of predicted mask > 0.5 with the true mask (blind models with a mask head only)",
}
MODEL = "model"
COMPARE_PREFIX = "compare:"


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    """A whole split in memory (uint8 images)."""
    clean: np.ndarray      # [N, R, R, 3]
    occluded: np.ndarray   # [N, R, R, 3]
    mask: np.ndarray       # [N, R, R, 1], 0 / 255
    category: list[str]
    source_id: list[str]

    def __len__(self) -> int:
        return len(self.category)


def load_split(data_dir: str, split: str, max_examples: int | None = None) -> Split:
    """Reads a prepared split (ArrayRecord shards) in file order.

    Raises:
      FileNotFoundError: no dataset / shards (the message says how to make one).
      features.RecordError: a record does not parse (names the shard).
    """
    import grain

    paths = features.list_shards(data_dir, split, "array_record")
    source = grain.sources.ArrayRecordDataSource(paths)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    if n == 0:
        raise ValueError(f"split {split!r} in {data_dir!r} has no examples")
    rows = [features.decode_example(source[i], f"{data_dir}/{split}[{i}]") for i in range(n)]
    return Split(clean=np.stack([r["clean"] for r in rows]),
                 occluded=np.stack([r["occluded"] for r in rows]),
                 mask=np.stack([r["mask"] for r in rows]),
                 category=[r["category"] for r in rows],
                 source_id=[r["source_id"] for r in rows])


# ----------------------------------------------------------------------------- sharding


def make_mesh():
    """A 1-D mesh over every device, axis "data".

    Auto axis type: XLA propagates the batch sharding through the metric and
    model code (reshapes included), which Explicit mode would reject.
    """
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def _padded(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[0] == size:
        return x
    pad = np.repeat(x[:1], size - x.shape[0], axis=0)  # copies of a real row: no NaNs
    return np.concatenate([x, pad])


def batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


class ShardedEvaluator:
    """Runs models and the metrics jitted over a data-parallel mesh.

    Args:
      mesh: a mesh with a "data" axis; batches are split along it.
      batch_size: global batch; rounded up to a multiple of the device count.
    """

    def __init__(self, mesh, batch_size: int):
        self.mesh = mesh
        n_dev = mesh.devices.size
        self.batch_size = -(-batch_size // n_dev) * n_dev
        self.data_sharding = NamedSharding(mesh, P("data"))
        self.replicated = NamedSharding(mesh, P())
        self._metrics_jit = jax.jit(self._metrics, out_shardings=self.data_sharding)

    @staticmethod
    def _metrics(pred, clean, mask, pred_mask):
        scale = lambda x: x.astype(jnp.float32) / 255.0
        return metrics.image_metrics(scale(pred), scale(clean), scale(mask), pred_mask,
                                     data_range=1.0)

    def put(self, x: np.ndarray):
        return jax.device_put(_padded(x, self.batch_size), self.data_sharding)

    def metrics(self, pred: np.ndarray, clean: np.ndarray, mask: np.ndarray,
                pred_mask: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per-image metrics of one (unpadded) batch as numpy [n] arrays."""
        n = pred.shape[0]
        out = self._metrics_jit(self.put(pred), self.put(clean), self.put(mask),
                                  None if pred_mask is None else self.put(pred_mask))
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def jit_predict(self, predict_fn: Callable) -> Callable:
        """fn(variables, images, masks) jitted with batch-sharded inputs and outputs."""
        return jax.jit(predict_fn, out_shardings=self.data_sharding)


# ----------------------------------------------------------------------------- methods


@dataclasses.dataclass
class Method:
    """Something that restores a batch: fn(occluded uint8, true mask uint8) -> outputs."""
    name: str
    description: str
    fn: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    predicts_mask: bool = False


def model_method(name: str, workdir: str, checkpoint: str | int, evaluator: ShardedEvaluator,
                 resolution: int) -> tuple[Method, dict[str, Any]]:
    """A Method running a workdir's checkpoint with its batch sharded over the mesh."""
    from deocc_jax import inference, infer_lib

    config, variables = inference.load_model(workdir, checkpoint)
    step = infer_lib.checkpoint_step(workdir, checkpoint)
    if int(config.resolution) != resolution:
        raise ValueError(f"{workdir} was trained at {config.resolution} px but the dataset is "
                         f"{resolution} px")
    guided = infer_lib.model_is_guided(config)
    variables = evaluator.replicate(variables)
    predict = evaluator.jit_predict(functools.partial(inference.predict, config))

    def fn(images, masks):
        n = images.shape[0]
        out = predict(variables, evaluator.put(images), evaluator.put(masks) if guided else None)
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    info = {"workdir": os.path.abspath(workdir), "checkpoint": str(checkpoint), "step": step,
            "mode": config.model.mode}
    desc = f"{workdir} step {step} ({config.model.mode})"
    # Without a mask head a blind model regenerates the whole face and its
    # "mask" is all ones: an IoU of that would only measure the mask's area.
    predicts_mask = not guided and bool(config.model.generator.get("mask_head", True))
    return Method(name, desc, fn, predicts_mask=predicts_mask), info


def baseline_methods() -> list[Method]:
    descs = {"occluded_input": "the occluded input, unchanged",
             "opencv_telea": "cv2.inpaint TELEA with the true mask",
             "opencv_ns": "cv2.inpaint NS with the true mask"}
    return [Method(name, descs[name], lambda x, m, f=f: {"deoccluded": f(x, m)})
            for name, f in baselines.BASELINES.items()]


# ----------------------------------------------------------------------------- aggregation


def aggregate(per_image: Mapping[str, np.ndarray], categories: Sequence[str]) -> dict[str, Any]:
    """{"overall": {...}, "per_category": {cat: {...}}} with counts.

    Whole-image metrics average over all examples, masked ones over examples
    with a non-empty mask (`metrics.MetricAccumulator`'s rule).
    """
    cats = np.asarray(categories)

    def summary(sel: np.ndarray) -> dict[str, Any]:
        acc = metrics.MetricAccumulator()
        acc.add({k: v[sel] for k, v in per_image.items()})
        out = {"count": int(sel.sum()), "count_masked": int(per_image["has_mask"][sel].sum())}
        out.update({k: float(v) for k, v in acc.result().items()})
        return out

    return {"overall": summary(np.ones(len(cats), bool)),
            "per_category": {c: summary(cats == c) for c in sorted(set(categories))}}


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "–"
    if key.endswith("psnr"):
        return f"{v:.2f}"
    if key.endswith("mse"):
        return f"{v:.5f}"
    return f"{v:.4f}"


def markdown_report(result: Mapping[str, Any]) -> str:
    """Tables a person can paste into a report: overall, then per category."""
    methods = result["methods"]
    keys = [k for k in METRIC_KEYS if any(k in m["overall"] for m in methods.values())]
    lines = [f"### deocc evaluation: {result['split']} split of `{result['data_dir']}` "
             f"({result['num_examples']} examples)", ""]
    lines.append("| method | " + " | ".join(METRIC_LABELS[k] for k in keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(k, m["overall"].get(k)) for k in keys) + " |")
    lines.append("")
    cats = result["categories"]
    for key in ("masked_psnr", "masked_ssim"):
        lines.append(f"**{METRIC_LABELS[key]} per occluder category**")
        lines.append("")
        lines.append("| category (n) | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        for c, n in cats.items():
            row = [_fmt(key, m["per_category"][c].get(key)) for m in methods.values()]
            lines.append(f"| {c} ({n}) | " + " | ".join(row) + " |")
        lines.append("")
    lines.append("Higher is better except MSE. " + METRIC_NOTES["aggregation"] + "; "
                 + METRIC_NOTES["masked_*"] + "; " + METRIC_NOTES["scale"] + ".")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- sample grid


def pick_examples(score: np.ndarray, k: int) -> list[tuple[str, int]]:
    """(label, index) of the k best, k worst and k median examples by `score`."""
    order = [int(i) for i in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")]
    n = len(order)
    chosen: list[tuple[str, int]] = []
    mid = max(0, n // 2 - k // 2)
    for label, idxs in (("best", order[:k]), ("median", order[mid:mid + k]), ("worst", order[::-1][:k])):
        for i in idxs:
            if i not in [c[1] for c in chosen]:
                chosen.append((label, i))
    return chosen


def _label(tile: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    strip = np.full((height, tile.shape[1], 3), 255, np.uint8)
    scale = 0.4
    cv2.putText(strip, text[: max(4, tile.shape[1] // 7)], (3, height - 5), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile])


def sample_grid(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[np.ndarray]]],
                tile: int = 128) -> np.ndarray:
    """RGB grid: a header row of column names, then one row of tiles per example.

    Args:
      columns: column titles (e.g. occluded | model | ... | clean).
      rows: (row title, one uint8 [R, R, 3] image per column).
      tile: displayed tile size (nearest-neighbour upscaled so pixels stay visible).
    """
    def up(img):
        return cv2.resize(img, (tile, tile), interpolation=cv2.INTER_NEAREST)

    header = np.concatenate([_label(np.full((0, tile, 3), 255, np.uint8), c, 18) for c in columns], axis=1)
    out = [header]
    for title, imgs in rows:
        row = np.concatenate([up(i) for i in imgs], axis=1)
        out.append(_label(row, title, 16))
    return np.concatenate(out)


# ----------------------------------------------------------------------------- the run


def evaluate(workdir: str | None, data_dir: str, *, split: str = "test",
             checkpoint: str | int = "latest", compare: Sequence[str] = (),
             include_baselines: bool = True, batch_size: int = 32,
             max_examples: int | None = None, output: str = "metrics.json",
             grid_rows_per_kind: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates a checkpoint, other workdirs and the baselines on one split.

    Args:
      workdir: training workdir of the model; None evaluates only `compare`
        and the baselines.
      data_dir: prepared dataset (`python -m data_prep.build`).
      split: split name.
      checkpoint: "latest", "best" or a step.
      compare: more workdirs, evaluated at their latest checkpoint.
      include_baselines: add occluded_input / opencv_telea / opencv_ns.
      batch_size: global eval batch (rounded up to a multiple of the devices).
      max_examples: evaluate only the first n examples.
      output: metrics JSON path; the Markdown table and the grid PNG are
        written next to it (`<stem>.md`, `<stem>_samples.png`).
      grid_rows_per_kind: best / median / worst examples shown in the grid.
      log: progress output.

    Returns:
      The dict written to `output`.
    """
    data = load_split(data_dir, split, max_examples)
    info = features.read_dataset_info(data_dir)
    resolution = int(data.clean.shape[1])
    mesh = make_mesh()
    ev = ShardedEvaluator(mesh, batch_size)
    log(f"evaluating {len(data)} {split} examples at {resolution} px on {mesh.devices.size} "
        f"device(s), global batch {ev.batch_size}")

    methods: list[Method] = []
    checkpoints: dict[str, Any] = {}
    if workdir:
        m, ck = model_method(MODEL, workdir, checkpoint, ev, resolution)
        methods.append(m)
        checkpoints[MODEL] = ck
    used = set()
    for d in compare:
        name = COMPARE_PREFIX + os.path.basename(os.path.normpath(d))
        if name in used:
            name += f"#{len(used)}"
        used.add(name)
        m, ck = model_method(name, d, "latest", ev, resolution)
        methods.append(m)
        checkpoints[name] = ck
    if include_baselines:
        methods += baseline_methods()
    if not methods:
        raise ValueError("nothing to evaluate: give --workdir, --compare or keep the baselines")

    per_image: dict[str, dict[str, np.ndarray]] = {}
    grid_idx: list[tuple[str, int]] | None = None
    grid_preds: dict[str, dict[int, np.ndarray]] = {}
    for method in methods:
        parts: list[dict[str, np.ndarray]] = []
        preds: dict[int, np.ndarray] = {}
        for sl in batches(len(data), ev.batch_size):
            out = method.fn(data.occluded[sl], data.mask[sl])
            pm = out["mask"].astype(np.float32) if method.predicts_mask else None
            parts.append(ev.metrics(out["deoccluded"], data.clean[sl], data.mask[sl], pm))
            preds.update({i: out["deoccluded"][i - sl.start] for i in range(sl.start, sl.stop)})
        per_image[method.name] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if grid_idx is None:
            # Best / worst by the first method (the model when there is one).
            grid_idx = pick_examples(per_image[method.name]["masked_psnr"], grid_rows_per_kind)
        grid_preds[method.name] = {i: preds[i] for _, i in grid_idx}
        o = per_image[method.name]
        log(f"  {method.name}: PSNR {np.mean(o['psnr']):.2f} dB, occluded-region PSNR "
            f"{np.mean(o['masked_psnr'][o['has_mask'] > 0]) if o['has_mask'].any() else float('nan'):.2f} dB")

    categories = dict(sorted({c: data.category.count(c) for c in set(data.category)}.items()))
    stem = os.path.splitext(output)[0]
    md_path, grid_path = stem + ".md", stem + "_samples.png"
    result = {
        "split": split,
        "data_dir": os.path.abspath(data_dir),
        "dataset_version": info.get("version", info.get("format_version")),
        "resolution": resolution,
        "num_examples": len(data),
        "num_devices": int(mesh.devices.size),
        "categories": categories,
        "checkpoints": checkpoints,
        "metric_notes": METRIC_NOTES,
        "methods": {m.name: {"description": m.description,
                             **aggregate(per_image[m.name], data.category)} for m in methods},
        "outputs": {"metrics": os.path.abspath(output), "markdown": os.path.abspath(md_path),
                    "grid": os.path.abspath(grid_path)},
    }
    first = methods[0].name
    result["grid_examples"] = [
        {"kind": kind, "index": i, "category": data.category[i], "source_id": data.source_id[i],
         f"{first}_masked_psnr": float(per_image[first]["masked_psnr"][i])} for kind, i in grid_idx]

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(markdown_report(result))
    cols = ["occluded"] + [m.name for m in methods if m.name != "occluded_input"] + ["clean"]
    rows = []
    for kind, i in grid_idx:
        imgs = [data.occluded[i]] + [grid_preds[m.name][i] for m in methods
                                     if m.name != "occluded_input"] + [data.clean[i]]
        rows.append((f"{kind} #{i} {data.category[i]}: {first} "
                     f"{per_image[first]['masked_psnr'][i]:.1f} dB occl.", imgs))
    grid = sample_grid(cols, rows)
    if not cv2.imwrite(grid_path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise IOError(f"could not write {grid_path}")
    with open(output, "w") as f:
        json.dump(_json_safe(result), f, indent=2)
    return result


def _json_safe(x):
    """Replaces inf/NaN (e.g. PSNR of identical images) by None: strict JSON has no inf."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
