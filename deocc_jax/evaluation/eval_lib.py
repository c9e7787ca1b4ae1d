"""Evaluation of trained models and baselines on a prepared split: one path for everyone.

The training loop's validation (`validate`) and the `deocc_jax.evaluate`
binary (`evaluate`) both run `Evaluator.run`: batches from the grain eval
iterator are laid out over the device mesh, every method restores them, and
the per-image metrics of `deocc_jax.evaluation.metrics.image_metrics` (whole image and
inside the true occluder mask, plus predicted-mask IoU for models with a mask
head) are computed jitted on the sharded batch, with the realism inputs of
`metrics.realism_metrics` (detail inside the eroded mask, occluder remnants);
models are also run on the clean faces themselves (`metrics.harm_metrics`:
what they change where there is nothing to remove); face-aware metrics
(`deocc_jax.evaluation.face_metrics`: expression, landmarks, identity, and how often a
restoration is closer to the clean face than the occluded input) run on the
host where enabled. Per-image values are then pooled overall and per occluder
category. `evaluate(framing="tight")` first re-crops every batch as a tight face
photo reaches the model (`deocc_jax.evaluation.framing`).

Methods compared on the same examples:
  model                 the model under test (a workdir, pretrained folder or export)
  compare:<name>        any other models (`--compare`)
  occluded_input        the input itself (what doing nothing scores)
  opencv_telea, opencv_ns  OpenCV inpainting given the true mask

Conventions: images are scaled to [0, 1] (so MSE is in [0, 1]^2 units and
PSNR uses a peak of 1); each number is the mean over examples of the per-image
value; occluded-region metrics average over examples whose mask is non-empty.

Over 500 lines on purpose: the Evaluator, its aggregation and its reports are one evaluation
path that the training loop and the binary both call.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from deocc_jax import errors, models
from deocc_jax.artifacts import predictors
from deocc_jax.evaluation import baselines, framing as framing_lib, metrics
from deocc_jax.training import sharding
from deocc_jax.evaluation import face_metrics as fm_lib
from deocc_jax.data import features, input_pipeline
from deocc_jax.io import atomic

PIXEL_KEYS = ("psnr", "ssim", "mse", "masked_psnr", "masked_ssim", "masked_mse", "mask_iou")
METRIC_KEYS = PIXEL_KEYS + fm_lib.METRICS
METRIC_LABELS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "mse": "MSE",
    "masked_psnr": "PSNR occl. (dB)", "masked_ssim": "SSIM occl.", "masked_mse": "MSE occl.",
    "mask_iou": "mask IoU", fm_lib.EXPRESSION: "expression err.",
    fm_lib.LANDMARKS: "landmark NME", fm_lib.IDENTITY: "identity dist.",
}
METRIC_NOTES = {
    "scale": "images in [0, 1]; PSNR peak 1; MSE in [0,1]^2 units",
    "aggregation": "mean over examples of the per-image value",
    "psnr/ssim/mse": "whole image vs the clean face",
    "masked_*": "inside the true occluder mask only; averaged over examples with a non-empty mask",
    "ssim": "Gaussian window sigma 1.5, as skimage.metrics.structural_similarity("
            "gaussian_weights=True, channel_axis=-1, data_range=1)",
    "mask_iou": "IoU of predicted mask > 0.5 with the true mask (blind models with a mask head only)",
    "face metrics": "expression_error, landmark_nme, identity_distance: lower is better; means "
                    "over the examples where every method's face was found (the *_found counts)",
    "detail_ratio": "sum over the set of mean |Laplacian| of the grey output inside the true mask "
                    f"eroded by {metrics.DETAIL_ERODE_PX} px, over the same sum for the clean "
                    "face (a ratio of sums, not a mean of ratios): 1 = as much fine structure as "
                    "the real face, a blur is near 0, noise exceeds 1; read it beside PSNR",
    "identity_closer_than_input": "share of faces whose identity distance is below the "
                                  "occluded input's on the same face (faces found for every method)",
    "harm_*": "the method run on the clean faces themselves: harm_changed = mean share of face "
              "pixels (a template ellipse) whose grey level moved by more than "
              f"{round(metrics.HARM_LEVEL * 255)} levels; harm_ok_share = share of faces with at "
              f"most {metrics.HARM_OK_SHARE:.0%} changed; harm_mask_area = mean share of the crop "
              "the predicted mask (> 0.5) covers; models only",
    "remnants": "share of true-mask pixels (where the occluder differs from the face by more than "
                f"{round(metrics.REMNANT_MIN_CONTRAST * 255)} RGB levels) whose restored colour "
                "is closer to the occluder than to the clean face, pooled over pixels; "
                "remnants_dark: the same over occluders whose mean grey level is below "
                f"{round(metrics.DARK_OCCLUDER_LUMA * 255)} (count_dark of them; the records "
                "do not say which occluders are patterned)",
}
REALISM_KEYS = ("detail_ratio", "remnants", "remnants_dark", fm_lib.IDENTITY,
                "identity_closer_than_input", "harm_changed", "harm_ok_share", "harm_mask_area")
REALISM_LABELS = {
    "detail_ratio": "detail ratio", "remnants": "remnants", "remnants_dark": "remnants, dark",
    fm_lib.IDENTITY: "identity dist.", "identity_closer_than_input": "closer than input",
    "harm_changed": "harm: face changed", "harm_ok_share": "harm: faces <= 1 %",
    "harm_mask_area": "harm: mask area",
}
DOING_NOTHING = "occluded_input"
MODEL = "model"
COMPARE_PREFIX = "compare:"
IMAGE_KEYS = ("occluded", "clean", "mask")


# ----------------------------------------------------------------------------- methods


@dataclasses.dataclass
class Method:
    """Something that restores a batch.

    `fn(batch, local)` gets the batch as global arrays on the mesh and as this
    process's numpy rows, and returns {"deoccluded" uint8, "mask" float32?}
    either as global arrays (models run on the mesh) or as local numpy rows
    (host methods: OpenCV, exports run by another runtime).
    """
    name: str
    description: str
    fn: Callable[[dict, dict], dict]
    predicts_mask: bool = False
    info: dict = dataclasses.field(default_factory=dict)
    # Also run on the clean faces, to measure the harm done where there is
    # nothing to remove (models; the baselines are told the true, empty, mask).
    harm: bool = False


def jax_model_method(name: str, config: ml_collections.ConfigDict, variables: Any, mesh: Mesh, *,
                     description: str, info: Mapping[str, Any] | None = None) -> Method:
    """A Method running a generator jitted over the mesh (replicated variables, sharded batch)."""
    variables = jax.device_put(variables, sharding.replicated(mesh))
    guided = models.is_guided(config)
    predict = jax.jit(functools.partial(models.predict, config),
                      out_shardings=sharding.batch_sharding(mesh))

    def fn(batch, local):
        del local
        return predict(variables, batch["occluded"], batch["mask"] if guided else None)

    return Method(name, description, fn, predicts_mask=models.predicts_mask(config),
                  info=dict(info or {}), harm=True)


def host_model_method(name: str, predictor: predictors.Predictor) -> Method:
    """A Method running an export (SavedModel / ONNX / LiteRT) in its own runtime on the host."""
    def fn(batch, local):
        del batch
        return predictor(local["occluded"], local["mask"] if predictor.guided else None)

    return Method(name, predictor.description, fn, predicts_mask=not predictor.guided,
                  info={"path": getattr(predictor, "path", None), "format": type(predictor).__name__},
                  harm=True)


def check_resolution(path: str | None, model_resolution: int, data_resolution: int) -> None:
    """One line naming the model when it cannot run on the dataset's crops."""
    if model_resolution != data_resolution:
        raise errors.InvalidInputError(f"{path}: the model works at {model_resolution} px but "
                                       f"the dataset is {data_resolution} px")


def eval_batch_size(batch_size: int, mesh: Mesh) -> int:
    """A positive global batch, rounded up to a multiple of the device count."""
    if batch_size <= 0:
        raise errors.InvalidInputError(f"--batch_size={batch_size}: must be a positive number")
    return -(-batch_size // mesh.devices.size) * mesh.devices.size


def category_counts(categories: Sequence[str]) -> dict[str, int]:
    """{category: number of examples}, sorted by name."""
    return dict(sorted(collections.Counter(categories).items()))


def open_method(name: str, path: str | None, checkpoint: str | int, mesh: Mesh,
                resolution: int) -> Method:
    """A Method for any model path (`predictors.open_predictor`), checked against the data."""
    predictor = predictors.open_predictor(path, checkpoint)
    check_resolution(path, predictor.resolution, resolution)
    if isinstance(predictor, predictors.JaxPredictor):
        m = predictor.model
        return jax_model_method(
            name, m.config, m.variables, mesh, description=m.description,
            info={"path": os.path.abspath(m.path), "kind": m.kind, "checkpoint": str(checkpoint),
                  "step": m.step, "mode": m.config.model.mode})
    return host_model_method(name, predictor)


def baseline_methods() -> list[Method]:
    descs = {"occluded_input": "the occluded input, unchanged",
             "opencv_telea": "cv2.inpaint TELEA with the true mask",
             "opencv_ns": "cv2.inpaint NS with the true mask"}
    return [Method(name, descs[name], lambda batch, local, f=f: {"deoccluded": f(local["occluded"],
                                                                                 local["mask"])})
            for name, f in baselines.BASELINES.items()]


# ----------------------------------------------------------------------------- the evaluator


@dataclasses.dataclass
class EvalResult:
    """Per-image results of a pass, on every process, in example order (valid rows only)."""
    per_image: dict[str, dict[str, np.ndarray]]  # method -> metric -> [N]
    categories: np.ndarray                       # [N] str
    indices: np.ndarray                          # [N] example index in the split
    samples: dict[str, np.ndarray]               # first rows: occluded/clean/mask + "<method>" outputs


@functools.partial(jax.jit, static_argnames=("with_mask",))
def _image_metrics(pred, clean, occluded, mask, pred_mask, with_mask: bool):
    pred, clean, occluded, mask = (models.mask_to_unit(x) for x in (pred, clean, occluded, mask))
    out = metrics.image_metrics(pred, clean, mask, pred_mask if with_mask else None)
    out.update(metrics.realism_metrics(pred, clean, occluded, mask))
    return out


@functools.partial(jax.jit, static_argnames=("with_mask",))
def _harm_metrics(pred, clean, pred_mask, with_mask: bool):
    return metrics.harm_metrics(models.mask_to_unit(pred), models.mask_to_unit(clean),
                                pred_mask if with_mask else None)


def clean_inputs(local: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch whose faces have nothing over them: the clean faces as input, empty masks."""
    return {"occluded": local["clean"], "clean": local["clean"],
            "mask": np.zeros_like(local["mask"])}


class Evaluator:
    """Runs methods over eval batches with their batch sharded over `mesh`.

    Args:
      mesh: a mesh with a "data" axis.
      face_metrics: a `face_metrics.FaceMetrics` (host-side, optional).
      log: progress output (None: quiet).
    """

    def __init__(self, mesh: Mesh, face_metrics: Any = None,
                 log: Callable[[str], None] | None = None):
        self.mesh = mesh
        self.face_metrics = face_metrics
        self.log = log or (lambda s: None)

    def _as_global(self, out: Mapping[str, Any]) -> dict[str, jax.Array]:
        return {k: v if isinstance(v, jax.Array) else sharding.put_batch(self.mesh, {k: v})[k]
                for k, v in out.items()}

    def run(self, batches: Iterable[dict[str, np.ndarray]], methods: Sequence[Method], *,
            num_samples: int = 0, total: int | None = None) -> EvalResult:
        """One pass over `batches` (from `input_pipeline.make_eval_iterator`) for every method.

        Args:
          batches: this process's rows of each global batch, with "valid",
            "index" and "category".
          methods: what to evaluate.
          num_samples: keep the images of the first n examples (sample grids).
          total: number of examples, for progress lines.
        """
        parts: dict[str, list[dict[str, np.ndarray]]] = {m.name: [] for m in methods}
        meta_parts: list[dict[str, np.ndarray]] = []
        samples: dict[str, list[np.ndarray]] = {}
        kept = done = 0
        for local in batches:
            meta = sharding.gather_rows({k: local[k] for k in ("valid", "index", "category")})
            valid = meta["valid"] > 0
            meta_parts.append(meta)
            local = {k: local[k] for k in IMAGE_KEYS}
            batch = sharding.put_batch(self.mesh, local)
            reference = None
            if self.face_metrics is not None:
                reference = self.face_metrics.reference(local["clean"], local["mask"])
            outs = {}
            clean_local = clean_batch = None
            for m in methods:
                out = outs[m.name] = self._as_global(m.fn(batch, local))
                per_image = sharding.to_host(_image_metrics(
                    out["deoccluded"], batch["clean"], batch["occluded"], batch["mask"],
                    out.get("mask"), with_mask=m.predicts_mask))
                if m.harm:
                    if clean_local is None:
                        clean_local = clean_inputs(local)
                        clean_batch = sharding.put_batch(self.mesh, clean_local)
                    on_clean = self._as_global(m.fn(clean_batch, clean_local))
                    per_image.update(sharding.to_host(_harm_metrics(
                        on_clean["deoccluded"], batch["clean"], on_clean.get("mask"),
                        with_mask=m.predicts_mask)))
                if reference is not None:
                    restored = sharding.local_rows(out["deoccluded"])
                    per_image.update(sharding.gather_rows(
                        self.face_metrics.per_image(reference, restored)))
                parts[m.name].append(per_image)
            if kept < num_samples:
                def take(x, n=num_samples - kept):
                    return sharding.to_host(x)[valid][:n]
                for key in IMAGE_KEYS:
                    samples.setdefault(key, []).append(take(batch[key]))
                for name, out in outs.items():
                    samples.setdefault(name, []).append(take(out["deoccluded"]))
                    if "mask" in out:
                        samples.setdefault(name + ":mask", []).append(take(out["mask"]))
                kept += len(samples["clean"][-1])
            done += int(valid.sum())
            if total:
                self.log(f"  evaluated {done}/{total} examples")
        if not meta_parts:
            return EvalResult({}, np.zeros(0, str), np.zeros(0, np.int64), {})
        meta = {k: np.concatenate([p[k] for p in meta_parts]) for k in meta_parts[0]}
        valid = meta["valid"] > 0
        per_method = {name: {k: np.concatenate([p[k] for p in ps])[valid] for k in ps[0]}
                      for name, ps in parts.items()}
        return EvalResult(per_image=per_method, categories=meta["category"][valid].astype(str),
                          indices=meta["index"][valid],
                          samples={k: np.concatenate(v) for k, v in samples.items()})


# ----------------------------------------------------------------------------- the loop's validation


def validate(mesh: Mesh, config: ml_collections.ConfigDict, variables: Any, *,
             split: str | None = None, num_examples: int | None = None,
             face_metrics: Any = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation metrics of a training run's generator, and a sample grid of its first faces.

    Returns:
      ({"val_psnr", "val_ssim", "val_masked_*", "val_mask_iou"?, face metrics?},
       uint8 grid (occluded | predicted mask | output | clean rows) or None).
    """
    split = split or config.eval_split
    n = config.num_eval_examples if num_examples is None else num_examples
    batches = input_pipeline.make_eval_iterator(
        config.data_dir, split, config.batch_size, num_examples=None if n < 0 else n,
        num_threads=config.data.get("num_threads", 2))
    method = jax_model_method(MODEL, config, variables, mesh, description="training state")
    result = Evaluator(mesh, face_metrics).run(batches, [method],
                                               num_samples=config.num_sample_images)
    if MODEL not in result.per_image:
        return {}, None
    overall = aggregate(result.per_image[MODEL], result.categories)["overall"]
    values = {f"val_{k}": float(v) for k, v in overall.items()
              if k not in ("count", "count_masked", "count_dark", "identity_closer_count")
              and isinstance(v, (int, float)) and np.isfinite(v)}
    grid = None
    s = result.samples
    if config.num_sample_images > 0 and len(s.get("clean", ())):
        grid = training_grid(s["occluded"], s[MODEL + ":mask"], s[MODEL], s["clean"])
    return values, grid


def training_grid(occluded: np.ndarray, pred_mask: np.ndarray, output: np.ndarray,
                  clean: np.ndarray) -> np.ndarray:
    """uint8 grid, one row per sample: occluded | predicted mask | output | clean."""
    mask_rgb = np.repeat(np.clip(np.round(pred_mask * 255.0), 0, 255).astype(np.uint8), 3, axis=-1)
    rows = [np.concatenate([o, m, p, c], axis=1)
            for o, m, p, c in zip(occluded, mask_rgb, output, clean)]
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------- aggregation


def aggregate(per_image: Mapping[str, np.ndarray], categories: Sequence[str],
              face_selection: np.ndarray | None = None,
              unavailable: Mapping[str, str] | None = None,
              doing_nothing: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """{"overall": {...}, "per_category": {cat: {...}}} with counts.

    Whole-image metrics average over all examples, masked ones over examples
    with a non-empty mask (`metrics.MetricAccumulator`'s rule). Face metrics,
    when present, average over `face_selection` (the examples where every
    compared method's face was found, so no method gains by losing its worst
    faces) with found/missing counts (`face_metrics.aggregate`). Realism
    (detail ratio, remnants, harm) is pooled by `metrics.realism_summary`;
    with `doing_nothing` (the occluded input's per-image values) and identity,
    "identity_closer_than_input" is the share of faces restored closer to the
    clean face than the input was (`face_metrics.closer_share`).
    """
    cats = np.asarray(categories)
    pixel = {k: v for k, v in per_image.items() if k in PIXEL_KEYS or k == "has_mask"}
    realism = {k: v for k, v in per_image.items()
               if k in metrics.REALISM_INPUTS + metrics.HARM_KEYS}
    has_face = "face_found" in per_image
    if has_face and face_selection is None:
        face_selection = np.ones(len(cats), bool)

    def summary(sel: np.ndarray) -> dict[str, Any]:
        acc = metrics.MetricAccumulator()
        acc.add({k: v[sel] for k, v in pixel.items()})
        out = {"count": int(sel.sum()), "count_masked": int(pixel["has_mask"][sel].sum())}
        out.update({k: float(v) for k, v in acc.result().items()})
        if has_face:
            faces = fm_lib.aggregate(per_image, select=sel & face_selection,
                                           unavailable=unavailable)
            out.update({k: v for k, v in faces.items() if k != "count"})
            out["count_faces"] = faces["count"]
            if (doing_nothing is not None and fm_lib.IDENTITY in per_image
                    and fm_lib.IDENTITY in doing_nothing):
                share, n = fm_lib.closer_share(per_image[fm_lib.IDENTITY],
                                               doing_nothing[fm_lib.IDENTITY], sel & face_selection)
                out["identity_closer_than_input"] = share
                out["identity_closer_count"] = n
        if realism:
            out.update(metrics.realism_summary(realism, sel))
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
    frame = result.get("framing") or {}
    if frame.get("name", framing_lib.TEMPLATE) != framing_lib.TEMPLATE:
        lines += [f"Framing: {frame['description']}; box (x0, y0, x1, y1) = {tuple(frame['box'])}.",
                  ""]
    lines.append("| method | " + " | ".join(METRIC_LABELS[k] for k in keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(k, m["overall"].get(k)) for k in keys) + " |")
    lines.append("")
    cats = result["categories"]
    for key in ("masked_psnr", "masked_ssim", fm_lib.EXPRESSION):
        if key not in keys:
            continue
        lines.append(f"**{METRIC_LABELS[key]} per occluder category**")
        lines.append("")
        lines.append("| category (n) | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        for c, n in cats.items():
            row = [_fmt(key, m["per_category"][c].get(key)) for m in methods.values()]
            lines.append(f"| {c} ({n}) | " + " | ".join(row) + " |")
        lines.append("")
    lines += realism_table(methods)
    lines.append("Higher is better except MSE and the face metrics (expression, landmark NME, "
                 "identity). " + METRIC_NOTES["aggregation"] + "; " + METRIC_NOTES["masked_*"] + "; "
                 + METRIC_NOTES["scale"] + ".")
    if result.get("face_metrics"):
        lines += ["", result["face_metrics"]]
    return "\n".join(lines) + "\n"


def realism_table(methods: Mapping[str, Any]) -> list[str]:
    """Markdown lines: detail, remnants, identity against doing nothing and harm, one row a method."""
    keys = [k for k in REALISM_KEYS if any(m["overall"].get(k) is not None for m in methods.values())]
    if not keys:
        return []

    def cell(m, k):
        v = m["overall"].get(k)
        if v is None:
            return "–"
        if k in ("remnants", "remnants_dark", "identity_closer_than_input", "harm_changed",
                 "harm_ok_share", "harm_mask_area"):
            return f"{100 * v:.1f} %"
        return f"{v:.3f}"

    dark = max((m["overall"].get("count_dark", 0) for m in methods.values()), default=0)
    lines = [f"**Realism** (detail ratio: 1 = the real face's fine structure, blur near 0; "
             f"remnants, dark: {dark} dark occluders; closer than input: faces whose identity "
             "distance beats doing nothing; harm: run on the clean faces)", "",
             "| method | " + " | ".join(REALISM_LABELS[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(cell(m, k) for k in keys) + " |")
    return lines + [""]


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




# ----------------------------------------------------------------------------- the binary's run


def evaluate(model: str | None, data_dir: str, *, split: str = "test",
             checkpoint: str | int = "latest", compare: Sequence[str] = (),
             include_baselines: bool = True, batch_size: int = 32,
             max_examples: int | None = None, output: str = "metrics.json",
             grid_rows_per_kind: int = 2, face_metrics: Any = None, overwrite: bool = False,
             framing: str = framing_lib.TEMPLATE,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates a model, other models and the baselines on one split.

    Args:
      model: the model under test: a workdir, pretrained folder or export
        (`predictors.open_predictor`); None evaluates only `compare` and the baselines.
      data_dir: prepared dataset (`python -m data_prep.build`).
      split: split name.
      checkpoint: for workdirs: "latest", "best" or a step.
      compare: more models, evaluated at their latest checkpoint.
      include_baselines: add occluded_input / opencv_telea / opencv_ns.
      batch_size: global eval batch (a multiple of the device count).
      max_examples: evaluate n examples spread evenly over the split.
      output: metrics JSON path; the Markdown table and the grid PNG are
        written next to it (`<stem>.md`, `<stem>_samples.png`).
      grid_rows_per_kind: best / median / worst examples shown in the grid; 0 writes
        no grid (and re-runs nothing).
      face_metrics: a `face_metrics.FaceMetrics`, or None for pixel metrics only.
      overwrite: replace existing outputs; without it an existing one is refused
        before anything is evaluated.
      framing: "template" (the crops as prepared) or "tight" (`framing.tight_recrop`
        of the clean and occluded faces, the mask cut to the box, for every method).
      log: progress output.

    Returns:
      The dict written to `output`.

    Raises:
      errors.OutputExistsError: an output exists and not `overwrite` (checked
        before any model is loaded).
    """
    if grid_rows_per_kind < 0:
        raise errors.InvalidInputError(f"--grid_rows={grid_rows_per_kind}: must be 0 (no grid) "
                                       "or more")
    if framing not in framing_lib.FRAMINGS:
        raise errors.InvalidInputError(f"--framing={framing}: must be one of "
                                       f"{', '.join(framing_lib.FRAMINGS)}")
    md_path, grid_path = output_paths(output)
    # An evaluation takes minutes to hours: a report in the way is refused before it starts.
    atomic.plan_outputs([("the metrics", output), ("the Markdown report", md_path)]
                        + ([("the sample grid", grid_path)] if grid_rows_per_kind > 0 else []),
                        overwrite=overwrite)
    mesh = sharding.make_mesh()
    batch_size = eval_batch_size(batch_size, mesh)
    info = features.read_dataset_info(data_dir)
    resolution = int(info["resolution"])
    num_examples = input_pipeline.split_size(data_dir, split)
    if max_examples is not None:
        num_examples = min(num_examples, max_examples)
    if num_examples == 0:
        raise errors.InvalidInputError(f"{data_dir}: split {split!r} has no examples")
    log(f"evaluating {num_examples} {split} examples at {resolution} px on {mesh.devices.size} "
        f"device(s), global batch {batch_size}, {framing} framing")
    reframe = _reframer(framing, resolution)

    methods: list[Method] = []
    if model:
        methods.append(open_method(MODEL, model, checkpoint, mesh, resolution))
    used = set()
    for path in compare:
        name = COMPARE_PREFIX + os.path.basename(os.path.normpath(path))
        if name in used:
            name += f"#{len(used)}"
        used.add(name)
        methods.append(open_method(name, path, "latest", mesh, resolution))
    if include_baselines:
        methods += baseline_methods()
    if not methods:
        raise errors.InvalidInputError("nothing to evaluate: give --model, --compare or keep "
                                       "--baselines")

    batches = map(reframe, input_pipeline.make_eval_iterator(data_dir, split, batch_size,
                                                             num_examples=num_examples))
    result = Evaluator(mesh, face_metrics, log).run(batches, methods, total=num_examples)
    per_image, cats = result.per_image, [str(c) for c in result.categories]
    for m in methods:
        o = per_image[m.name]
        masked = o["masked_psnr"][o["has_mask"] > 0]
        log(f"  {m.name}: PSNR {np.mean(o['psnr']):.2f} dB, occluded-region PSNR "
            f"{np.mean(masked) if masked.size else float('nan'):.2f} dB")

    # Best / median / worst by the first method (the model when there is one), re-run on
    # just those examples for the grid rather than keeping every output in memory.
    # grid_rows_per_kind=0: no grid (its tiles are dataset photos; see launch/ship_model.py).
    first = methods[0].name
    grid_idx = (pick_examples(per_image[first]["masked_psnr"], grid_rows_per_kind)
                if grid_rows_per_kind > 0 else [])
    chosen = [int(result.indices[i]) for _, i in grid_idx]
    examples, local, grid_outputs = _grid_inputs(data_dir, split, chosen, methods, mesh, reframe)

    categories = category_counts(cats)
    face_selection = unavailable = None
    if face_metrics is not None:
        face_selection = fm_lib.found_in_all(per_image[m.name] for m in methods)
        unavailable = face_metrics.unavailable
    out_json = {
        "split": split,
        "data_dir": os.path.abspath(data_dir),
        "dataset_version": info.get("version", info.get("format_version")),
        "resolution": resolution,
        "num_examples": len(cats),
        "num_devices": int(mesh.devices.size),
        "framing": framing_lib.describe(framing, resolution),
        "categories": categories,
        "checkpoints": {m.name: m.info for m in methods if m.info},
        "metric_notes": METRIC_NOTES,
        "methods": {m.name: {"description": m.description,
                             **aggregate(per_image[m.name], cats, face_selection, unavailable,
                                         doing_nothing=(per_image.get(DOING_NOTHING)
                                                        if m.name != DOING_NOTHING else None))}
                    for m in methods},
        "face_metrics": face_metrics.describe() if face_metrics is not None else None,
        "outputs": {"metrics": os.path.abspath(output), "markdown": os.path.abspath(md_path),
                    **({"grid": os.path.abspath(grid_path)} if grid_idx else {})},
    }
    out_json["grid_examples"] = [
        {"kind": kind, "index": int(result.indices[i]), "category": cats[i],
         "source_id": e["source_id"], f"{first}_masked_psnr": float(per_image[first]["masked_psnr"][i])}
        for (kind, i), e in zip(grid_idx, examples)]

    if jax.process_index() == 0:
        atomic.write_text(md_path, markdown_report(out_json), overwrite=overwrite)
        if grid_idx:
            _write_grid(grid_path, methods, first, grid_idx, local, grid_outputs, result, cats,
                        per_image, overwrite=overwrite)
        atomic.write_text(output, json.dumps(_json_safe(out_json), indent=2), overwrite=overwrite)
    return out_json


def output_paths(output: str) -> tuple[str, str]:
    """The Markdown report and the sample grid written beside the metrics JSON `output`."""
    stem = os.path.splitext(output)[0]
    return stem + ".md", stem + "_samples.png"


def _reframer(framing: str, resolution: int) -> Callable[[dict], dict]:
    """What every batch goes through before the methods see it (`framing_lib`)."""
    if framing == framing_lib.TEMPLATE:
        return lambda batch: batch
    box = framing_lib.tight_box(resolution)
    return lambda batch: framing_lib.recrop_batch(batch, box)


def _grid_inputs(data_dir: str, split: str, chosen: list[int], methods: Sequence[Method],
                 mesh: Mesh, reframe: Callable[[dict], dict]
                 ) -> tuple[list[dict], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The chosen examples, their images as evaluated and every method's outputs (one process)."""
    if not chosen:
        return [], {}, {}
    examples = input_pipeline.read_examples(data_dir, split, chosen)
    local = reframe({k: np.stack([e[k] for e in examples]) for k in IMAGE_KEYS})
    outputs = {}
    if jax.process_count() == 1:
        padded = {k: np.concatenate([v, np.repeat(v[:1], -len(v) % mesh.devices.size, 0)])
                  for k, v in local.items()}
        batch = sharding.put_batch(mesh, padded)
        for m in methods:
            out = m.fn(batch, padded)
            outputs[m.name] = np.asarray(jax.device_get(out["deoccluded"]))[:len(chosen)]
    return examples, local, outputs


def _write_grid(path, methods, first, grid_idx, local, grid_outputs, result, cats, per_image, *,
                overwrite=False):
    shown = [m.name for m in methods if m.name != "occluded_input"]
    rows = []
    for j, (kind, i) in enumerate(grid_idx):
        imgs = [local["occluded"][j]] + [grid_outputs[n][j] for n in shown] + [local["clean"][j]]
        rows.append((f"{kind} #{int(result.indices[i])} {cats[i]}: {first} "
                     f"{per_image[first]['masked_psnr'][i]:.1f} dB occl.", imgs))
    grid = sample_grid(["occluded"] + shown + ["clean"], rows)
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise IOError(f"could not encode {path}")
    atomic.write_bytes(path, png.tobytes(), overwrite=overwrite)


def _json_safe(x):
    """Replaces inf/NaN (e.g. PSNR of identical images) by None: strict JSON has no inf."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
