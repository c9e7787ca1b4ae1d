"""Face geometry shared by data prep and inference: detection, landmarks, alignment."""

from deocc_jax.faces.align import (TEMPLATE_5, alignment_matrix, inverse_matrix, matrix_scale,
                                   transform_landmarks, warp_back, warp_to_crop)
from deocc_jax.faces.detect import NUM_LANDMARKS, Face, FaceAnalyzer, largest_face
