"""Named indices into MediaPipe's 478-point face mesh, and head pose from it.

"Left"/"right" here are image-left/right for an unmirrored frontal face (the
subject's right eye appears on the image's left).
"""

import dataclasses
import functools
import zipfile

import numpy as np

from deocc_jax.io import assets

# Eye corners: (outer, inner).
LEFT_EYE_CORNERS = (33, 133)
RIGHT_EYE_CORNERS = (263, 362)
# Iris centres (468..472 and 473..477 are the two irises; the first of each is the centre).
LEFT_IRIS = 468
RIGHT_IRIS = 473
LEFT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
RIGHT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LEFT_BROW = (70, 63, 105, 66, 107)
RIGHT_BROW = (300, 293, 334, 296, 336)
NOSE_TIP = 1
NOSE_BRIDGE_TOP = 168
NOSE_BRIDGE_MID = 197
MOUTH_LEFT = 61
MOUTH_RIGHT = 291
UPPER_LIP = 13
LOWER_LIP = 14
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
CHIN = 152
FOREHEAD = 10
LEFT_CHEEK = 234   # face-oval point at the image-left edge, about eye height
RIGHT_CHEEK = 454
# Face oval, clockwise from the top of the forehead.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image-left, image-right) eye centres as the mid-points of the eye corners.

    Corners rather than irises: they do not move with gaze.
    """
    lm = np.asarray(landmarks, np.float64)
    return lm[list(LEFT_EYE_CORNERS)].mean(0), lm[list(RIGHT_EYE_CORNERS)].mean(0)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """[5, 2]: left eye, right eye, nose tip, left and right mouth corners."""
    lm = np.asarray(landmarks, np.float64)
    le, re = eye_centres(lm)
    return np.stack([le, re, lm[NOSE_TIP], lm[MOUTH_LEFT], lm[MOUTH_RIGHT]])


def face_width(landmarks: np.ndarray) -> float:
    """Cheek-to-cheek distance in pixels."""
    lm = np.asarray(landmarks, np.float64)
    return float(np.linalg.norm(lm[RIGHT_CHEEK] - lm[LEFT_CHEEK]))


def yaw_ratio(landmarks: np.ndarray) -> float:
    """Head yaw proxy in [-0.5, 0.5]: where the nose tip sits between the cheeks.

    0 is frontal; negative means the nose points to the image-left.
    """
    lm = np.asarray(landmarks, np.float64)
    left, right, nose = lm[LEFT_CHEEK], lm[RIGHT_CHEEK], lm[NOSE_TIP]
    axis = right - left
    t = float(np.dot(nose - left, axis) / max(np.dot(axis, axis), 1e-9))
    return t - 0.5


# ----------------------------------------------------------------------------
# Head pose: MediaPipe's canonical face mesh posed to fit the landmarks.
# ----------------------------------------------------------------------------

NUM_MESH_POINTS = 468  # landmarks 0..467 are mesh vertices; 468..477 are the irises
_GEOMETRY_FILE = "geometry_pipeline_metadata_landmarks.binarypb"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return out, i


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message, without its schema."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


@dataclasses.dataclass(frozen=True)
class CanonicalFace:
    """MediaPipe's canonical face: mesh vertices and the weights of its rigid points.

    Attributes:
      vertices: float64 [468, 3] in cm, camera axes (x to the image's right, y
        down, z away from the camera) for a frontal, upright face.
      weights: float64 [468], MediaPipe's Procrustes weights: non-zero on 33
        points that move little with expression (eye corners, nose, cheekbones,
        forehead), which is what a head pose should be fitted to.
    """
    vertices: np.ndarray
    weights: np.ndarray


@functools.lru_cache(maxsize=4)
def canonical_face(model_path: str | None = None) -> CanonicalFace:
    """The canonical face, read from face_landmarker.task (not copied into deocc).

    The task bundle's GeometryPipelineMetadata holds canonical_mesh (a Mesh3d
    whose vertex_buffer is x, y, z, u, v per vertex) and
    procrustes_landmark_basis (landmark id, weight); it is decoded here from
    the protobuf wire format, field by field.

    Args:
      model_path: face_landmarker.task; default `assets.resolve_model`.
    """
    path = assets.resolve_model("face_landmarker.task", model_path)
    with zipfile.ZipFile(path) as z:
        meta = z.read(_GEOMETRY_FILE)
    floats: list[np.ndarray] = []
    weights = np.zeros(NUM_MESH_POINTS)
    for num, wire, value in _fields(meta):
        if num == 1 and wire == 2:      # canonical_mesh
            for n, _, v in _fields(value):
                if n == 3:              # vertex_buffer: packed, or one float per field
                    floats.append(np.frombuffer(v, "<f4"))
        elif num == 2 and wire == 2:    # procrustes_landmark_basis entry
            ref = {n: v for n, _, v in _fields(value)}
            weights[int(ref.get(1, 0))] = float(np.frombuffer(ref[2], "<f4")[0]) if 2 in ref else 0.0
    vertices = np.concatenate(floats).astype(np.float64).reshape(-1, 5)[:, :3]
    if vertices.shape[0] != NUM_MESH_POINTS or not weights.any():
        raise ValueError(f"{path}: unexpected face geometry ({vertices.shape[0]} vertices, "
                         f"{int((weights > 0).sum())} weighted points)")
    # Mesh axes: x right, y up, z towards the viewer; camera axes flip y and z.
    return CanonicalFace(vertices=vertices * np.array([1.0, -1.0, -1.0]), weights=weights)


@dataclasses.dataclass(frozen=True)
class HeadPose:
    """A scaled-orthographic fit of the canonical face to 2D landmarks.

    `image_xy = scale * (rotation @ mesh_xyz)[:2] + translation` for every
    mesh vertex. Angles in degrees: yaw > 0 turns the nose towards the
    image's left, pitch > 0 tilts the chin down, roll > 0 turns the face
    clockwise in the image.

    Attributes:
      rotation: float64 [3, 3], proper rotation.
      scale: image pixels per mesh cm.
      translation: float64 [2].
      yaw, pitch, roll: degrees.
      error: RMS distance between the rigid landmarks and the posed mesh, in
        inter-ocular distances: large when the landmarks do not form a face.
      error_all: the same over all 468 mesh points (expressions add to it).
    """
    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    yaw: float
    pitch: float
    roll: float
    error: float
    error_all: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """Image (x, y) of mesh-frame 3D points [N, 3]."""
        p = np.asarray(points, np.float64) @ self.rotation.T
        return self.scale * p[:, :2] + self.translation


def head_pose(landmarks: np.ndarray, face: CanonicalFace) -> HeadPose:
    """Poses the canonical face on 478 (or 468) image landmarks.

    Weighted least squares (MediaPipe's rigid-point weights) for a 2x3 affine
    camera, then its closest scaled rotation (the orthographic "POS" step), so
    the result is always a rigid face.
    """
    lm = np.asarray(landmarks, np.float64)[:NUM_MESH_POINTS]
    X, w = face.vertices, face.weights
    X0, x0 = (w @ X) / w.sum(), (w @ lm) / w.sum()
    sw = np.sqrt(w)[:, None]
    A = np.linalg.lstsq((X - X0) * sw, (lm - x0) * sw, rcond=None)[0].T     # [2, 3]
    u, s, vt = np.linalg.svd(A, full_matrices=False)
    scale = float(s.mean())
    r12 = u @ vt                                                          # orthonormal rows
    rotation = np.vstack([r12, np.cross(r12[0], r12[1])])
    translation = x0 - scale * (X0 @ rotation[:2].T)
    sq = ((scale * (X @ rotation[:2].T) + translation - lm) ** 2).sum(1)
    iod = max(float(np.linalg.norm(np.subtract(*eye_centres(landmarks)))), 1e-6)
    # rotation = Rz(roll) @ Ry(yaw) @ Rx(pitch), in camera axes (y down, z away).
    return HeadPose(rotation=rotation, scale=scale, translation=translation,
                    yaw=float(np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1, 1)))),
                    pitch=float(np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))),
                    roll=float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))),
                    error=float(np.sqrt((w @ sq) / w.sum())) / iod,
                    error_all=float(np.sqrt(sq.mean())) / iod)


# A mirrored photo's iris points: each iris's centre, top and bottom map to the
# other iris's; its image-left and image-right points swap sides.
_IRIS_MIRROR = {468: 473, 469: 476, 470: 475, 471: 474, 472: 477}


@functools.lru_cache(maxsize=4)
def mirror_order(model_path: str | None = None) -> np.ndarray:
    """int [478]: the landmark a mirror image puts at each index (an involution).

    Landmarks found on a horizontally flipped photo are those of the photo once
    their x is flipped back and they are reordered by this: `flipped[order]`.
    The mesh's pairs come from the canonical face, which is left-right
    symmetric; the irises from `_IRIS_MIRROR`.
    """
    v = canonical_face(model_path).vertices
    mirrored = v * np.array([-1.0, 1.0, 1.0])
    order = np.linalg.norm(v[:, None] - mirrored[None], axis=-1).argmin(1)
    iris = {**_IRIS_MIRROR, **{b: a for a, b in _IRIS_MIRROR.items()}}
    order = np.concatenate([order, [iris[i] for i in range(NUM_MESH_POINTS, 478)]])
    if sorted(order) != list(range(478)):
        raise ValueError("the canonical face is not left-right symmetric")
    return order


def unmirror(landmarks: np.ndarray, width: float) -> np.ndarray:
    """Landmarks [478, 2] found on a photo flipped left-right, in the photo `width` px wide."""
    pts = np.asarray(landmarks, np.float32)[mirror_order()].copy()
    pts[:, 0] = width - pts[:, 0]   # continuous coordinates: pixel edges at 0 and width
    return pts
