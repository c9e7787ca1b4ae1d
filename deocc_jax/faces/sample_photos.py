"""Real photos that ship inside already-installed packages.

The quickstart, the export self-check and the docs need real face photos
without a download or anything stored in this repository. Two portraits are
installed with our dependencies: scikit-image's `astronaut.png` (NASA photo
of Eileen Collins, public domain) and matplotlib's `grace_hopper.jpg`
(matplotlib is a dependency of mediapipe). scikit-image's `chelsea.png` (a
cat) is a real photo with no human face, for the no-face path.
"""

from __future__ import annotations

import os

import numpy as np

from deocc_jax.faces import FaceAnalyzer, align, alignment_matrix, largest_face
from deocc_jax.io import images


def _skimage_data(name: str) -> str:
    import skimage.data  # only to find the package's folder
    return os.path.join(os.path.dirname(skimage.data.__file__), name)


def _matplotlib_sample(name: str) -> str:
    import matplotlib  # only to find the package's folder
    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", name)


def face_photo_paths() -> list[str]:
    """Paths of the embedded face photos; an error if a package lacks them."""
    paths = [_skimage_data("astronaut.png"), _matplotlib_sample("grace_hopper.jpg")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"embedded sample photos not found: {missing}. They ship with scikit-image and "
            "matplotlib; reinstall them or pass your own photos with --input")
    return paths


def no_face_photo_path() -> str:
    """A real photo with no human face in it (scikit-image's cat)."""
    path = _skimage_data("chelsea.png")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (ships with scikit-image)")
    return path


def aligned_faces(paths: list[str], resolution: int,
                  landmarker_model: str | None = None) -> np.ndarray:
    """The largest face of each photo, aligned to the training template.

    Returns:
      uint8 [N, resolution, resolution, 3].

    Raises:
      ValueError: a photo has no detectable face (names the file).
    """
    crops = []
    with FaceAnalyzer(mode="image", num_faces=4, model_path=landmarker_model) as analyzer:
        for path in paths:
            image = images.read_image(path)
            face = largest_face(analyzer.detect(image))
            if face is None:
                raise ValueError(f"{path}: no face detected")
            # Padded like the training crops (FFHQ's fill beyond the photo).
            crops.append(align.padded_crop(image, alignment_matrix(face.landmarks, resolution),
                                           resolution).image)
    return np.stack(crops)
