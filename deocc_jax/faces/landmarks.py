"""Named indices into MediaPipe's 478-point face mesh.

"Left"/"right" here are image-left/right for an unmirrored frontal face (the
subject's right eye appears on the image's left).
"""

import numpy as np

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
