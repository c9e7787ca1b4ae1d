r"""What a model does to faces with nothing over them, and what the harm gate buys.

The library of `python -m benchmarks.harm` (benchmarks/harm.py, its flags).

Most frames of a call have no occluder. Faces of `../shared/data/faces` (spread evenly over
the folder) are found and aligned as `infer` aligns them; each is restored twice, as it is
(clean) and with `--variants` occluders from data_prep's generator (occluded), and composited
with its predicted mask exactly as `infer` pastes it (`restoration.blend.blend_alpha_crop`), in
crop space. For every setting of the harm gate (`blend.MIN_COMPONENT_FRAC`, mask regions
smaller than that share of the crop keep the input) it reports:

  clean     harm: share of face pixels (inside MediaPipe's face oval) whose grey level moved
            by more than `metrics.HARM_LEVEL`; faces with at most 1 % changed; the predicted
            mask's area (> 0.5, share of the crop)
  occluded  faces the gate skips (nothing replaced at all), share of the true mask replaced
            (blend weight >= 0.5), occluded-region PSNR of the composite against the clean face

and the largest setting that skips at most `--max_skipped` of the occluded faces, beside the
gate off. The JSON also keeps the mask-area distributions of both sets.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import cv2
import numpy as np

from benchmarks import common
from data_prep import geometry, occluders as occ
from data_prep import synth
from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.evaluation import metrics
from deocc_jax.faces import FaceAnalyzer, align
from deocc_jax.restoration import blend, frames

GATES = (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04)


@dataclasses.dataclass
class FaceSet:
    """Aligned faces: clean crops, face-oval regions, occluded versions and their true masks."""
    names: list[str]
    clean: np.ndarray        # uint8 [N, R, R, 3]
    regions: np.ndarray      # float32 [N, R, R, 1], 1 inside the face oval
    occluded: np.ndarray     # uint8 [N * V, R, R, 3]: face i's variants at i * V ...
    occluded_clean: np.ndarray  # uint8 [N * V, R, R, 3]: what each occluded face hides
    true_masks: np.ndarray   # uint8 [N * V, R, R, 1]
    categories: list[str]    # [N * V]


def pick_photos(faces_dir: str, num: int) -> list[str]:
    """`num` photos spread evenly over the folder's sorted .jpg/.png files."""
    paths = sorted(p for p in glob.glob(os.path.join(faces_dir, "*"))
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))
    if not paths:
        raise errors.InputNotFoundError(f"--faces {faces_dir}: no .jpg or .png photos")
    idx = np.unique(np.linspace(0, len(paths) - 1, min(num, len(paths))).round().astype(int))
    return [paths[i] for i in idx]


def prepare(paths: list[str], resolution: int, library: occ.OccluderLibrary | None,
            variants: int, seed: int) -> FaceSet:
    """Largest face of each photo, aligned as `infer` aligns it, clean and occluded."""
    names, clean, regions, occluded, hidden, masks, cats = [], [], [], [], [], [], []
    with FaceAnalyzer(mode="image", num_faces=1) as analyzer:
        for path in paths:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                continue
            image = np.ascontiguousarray(image[..., ::-1])
            faces = analyzer.detect(image)
            if not faces:
                continue
            crops = frames.align_faces(image, [faces[0].landmarks], resolution)
            crop = crops.crops[0]
            lm = align.transform_landmarks(faces[0].landmarks, crops.matrices[0])
            name = os.path.basename(path)
            names.append(name)
            clean.append(crop)
            regions.append(geometry.face_oval_region(lm, resolution)[..., None])
            geo = geometry.FaceGeometry.from_landmarks(lm, resolution)
            for v in range(variants):
                s = synth.synthesize(crop, lm, synth.variant_rng(seed, name, v), library,
                                     geometry=geo)
                occluded.append(s.occluded)
                hidden.append(s.clean)
                masks.append(s.mask)
                cats.append(s.category)
    if not names:
        raise errors.InvalidInputError("no face found in any photo")
    return FaceSet(names, np.stack(clean), np.stack(regions).astype(np.float32),
                   np.stack(occluded), np.stack(hidden), np.stack(masks), cats)


def restore(model, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 restored [N, R, R, 3], float32 masks [N, R, R]) of a blind model."""
    outs, masks = [], []
    for i in range(0, len(images), batch):
        out = model(images[i:i + batch])
        outs.append(np.asarray(out["deoccluded"], np.uint8))
        masks.append(np.asarray(out["mask"], np.float32).reshape(-1, *images.shape[1:3]))
    return np.concatenate(outs), np.concatenate(masks)


def composite(inputs: np.ndarray, restored: np.ndarray, masks: np.ndarray,
              min_component_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """What `infer` pastes, in crop space: (uint8 [N, R, R, 3], blend weights [N, R, R])."""
    r = inputs.shape[1]
    alpha = np.stack([blend.blend_alpha_crop(m, r, min_component_frac) for m in masks])
    x = inputs.astype(np.float32)
    out = np.clip(np.round(x + alpha[..., None] * (restored.astype(np.float32) - x)), 0, 255)
    return out.astype(np.uint8), alpha


def _percentiles(x: np.ndarray) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (0, 5, 10, 25, 50, 75, 90, 95, 100)}


def gate_row(faces: FaceSet, clean_out, clean_masks, occ_out, occ_masks, frac: float) -> dict:
    """Clean-face harm and occluded-face restoration with the gate at `frac`."""
    shown, _ = composite(faces.clean, clean_out, clean_masks, frac)
    changed = np.asarray(metrics.changed_share(shown / 255.0, faces.clean / 255.0, faces.regions))
    shown_occ, alpha = composite(faces.occluded, occ_out, occ_masks, frac)
    true = faces.true_masks[..., 0] > 0
    covered = [float((a[t] >= 0.5).mean()) for a, t in zip(alpha, true)]
    psnr = np.asarray(metrics.masked_psnr(shown_occ / 255.0, faces.occluded_clean / 255.0,
                                          faces.true_masks / 255.0))
    skipped = int(sum(a.max() == 0 for a in alpha))
    return {
        "min_component_frac": frac,
        "clean_harm_mean": round(float(changed.mean()), 5),
        "clean_faces_at_most_1pct": round(float(np.mean(changed <= metrics.HARM_OK_SHARE)), 4),
        "clean_faces_over_10pct": int((changed > 0.1).sum()),
        "occluded_faces_skipped": skipped,
        "occluded_share_skipped": round(skipped / len(alpha), 4),
        "occluded_true_mask_replaced": round(float(np.mean(covered)), 4),
        "occluded_masked_psnr": round(float(np.mean(psnr)), 3),
    }


def choose(rows: list[dict], max_skipped: float) -> dict:
    """The strongest gate that skips at most `max_skipped` of the occluded faces."""
    ok = [r for r in rows if r["occluded_share_skipped"] <= max_skipped]
    return max(ok, key=lambda r: r["min_component_frac"])


def run(model_path: str | None, faces_dir: str, occluders_dir: str | None, num_faces: int,
        variants: int, seed: int, max_skipped: float, log=print) -> dict:
    model = predictors.open_predictor(model_path)
    if model.guided:
        raise errors.InvalidInputError(f"{model.description}: a guided model predicts no mask")
    library = occ.OccluderLibrary(occluders_dir) if occluders_dir else None
    faces = prepare(pick_photos(faces_dir, num_faces), model.resolution, library, variants, seed)
    log(f"{len(faces.names)} faces, {len(faces.occluded)} occluded versions")
    clean_out, clean_masks = restore(model, faces.clean)
    occ_out, occ_masks = restore(model, faces.occluded)
    rows = [gate_row(faces, clean_out, clean_masks, occ_out, occ_masks, g) for g in GATES]
    for r in rows:
        log(str(r))
    off = rows[0]
    chosen = choose(rows, max_skipped)
    skipped_cats: dict[str, int] = {}
    _, alpha = composite(faces.occluded, occ_out, occ_masks, chosen["min_component_frac"])
    for a, c in zip(alpha, faces.categories):
        if a.max() == 0:
            skipped_cats[c] = skipped_cats.get(c, 0) + 1
    return {
        "model": getattr(model, "description", model_path),
        "faces_dir": os.path.abspath(faces_dir),
        "num_faces": len(faces.names),
        "num_occluded": len(faces.occluded),
        "variants": variants, "seed": seed,
        "occluded_categories": dict(sorted({c: faces.categories.count(c)
                                            for c in set(faces.categories)}.items())),
        "harm_level_grey": round(metrics.HARM_LEVEL * 255),
        "face_region": "MediaPipe's face oval (landmarks of the clean photo)",
        "mask_area_clean": _percentiles((clean_masks > blend.MASK_THRESHOLD).mean((1, 2))),
        "mask_area_occluded": _percentiles((occ_masks > blend.MASK_THRESHOLD).mean((1, 2))),
        "gates": rows,
        "max_skipped": max_skipped,
        "chosen": chosen,
        "shipped_default": blend.MIN_COMPONENT_FRAC,
        "before_after": {"gate off": off, f"gate {chosen['min_component_frac']}": chosen},
        "skipped_by_category": skipped_cats,
        "machine": common.machine_info(), "code": common.code_state(),
    }
