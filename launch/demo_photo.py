"""A real photo with a synthetic occluder drawn on its face: what `infer` gets to fix in demos.

Used by the quickstart and by `launch.ship_model` for the model card's picture, always on the
public-domain portraits that ship inside installed packages (`deocc_jax.faces.sample_photos`).
"""

from __future__ import annotations

import numpy as np

from data_prep import occluders as occ
from data_prep import synth
from deocc_jax.restoration import infer_lib
from deocc_jax.faces import (FaceAnalyzer, alignment_matrix, largest_face, transform_landmarks,
                             warp_back, warp_to_crop)


def occluded_demo_photo(photo: str, out_path: str, seed: int, occluders_dir: str | None) -> str:
    """The photo with a synthetic occluder on its largest face (what infer gets to fix).

    The occluder is drawn at 256 px in the aligned frame, then warped back and
    alpha-composited into the full photo, so it stays sharp at any model size.
    """
    image = infer_lib.read_rgb(photo)
    with FaceAnalyzer(mode="image") as analyzer:
        face = largest_face(analyzer.detect(image))
    if face is None:
        raise ValueError(f"{photo}: no face detected for the demo")
    res = 256
    M = alignment_matrix(face.landmarks, res)
    crop = warp_to_crop(image, M, res)
    library = occ.OccluderLibrary(occluders_dir) if occluders_dir else None
    s = synth.synthesize(crop, transform_landmarks(face.landmarks, M),
                         synth.variant_rng(seed, "quickstart-demo", 0), library)
    h, w = image.shape[:2]
    alpha = warp_back(s.alpha[..., 0].astype(np.float32) / 255.0, M, (h, w))[..., None]
    occluded = warp_back(s.occluded, M, (h, w)).astype(np.float32)
    out = np.clip(np.round(alpha * occluded + (1 - alpha) * image), 0, 255).astype(np.uint8)
    infer_lib.write_rgb(out_path, out)
    return out_path
