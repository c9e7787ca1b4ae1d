"""The page's two-stage face finder: its models as ONNX files and its settings.

The Python pipeline finds faces in two stages (`deocc_jax.faces.detect`): the
face landmarker, then MediaPipe's full-range BlazeFace with the landmark model
run on upright crops of what it finds (`faces.blazeface`, `faces.cascade`,
`faces.mesh`). The page repeats the second stage in the browser with the
onnxruntime-web it already runs the generator with, so both models are
converted from their .tflite files (the full-range detector from the assets
folder, the landmark model from inside `face_landmarker.task`) to ONNX with
tf2onnx. Neither MediaPipe Tasks for the web nor the .task bundle can do this
part: the Tasks FaceDetector builds short-range anchors (128 px input, 896
anchors) whatever model it is given, and the FaceLandmarker only landmarks
where its own detector points it.

The conversion takes about a minute; its results are kept in the user cache,
named by the sha256 of the .tflite bytes and the converter's version, so it
runs once per model. `page_config` hands the page the numbers of the Python
finder, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import tempfile

from deocc_jax import errors
from deocc_jax.faces import blazeface, cascade, detect, mesh
from deocc_jax.faces import landmarks as lmk
from deocc_jax.io import assets

# The ONNX opset of the converted models (onnxruntime-web 1.30 runs up to 21).
OPSET = 17
# URL paths the server gives the converted models (the page reads them from config.json).
DETECTOR_URL = "models/face_detection_full_range.onnx"
LANDMARKS_URL = "models/face_landmarks_detector.onnx"


@dataclasses.dataclass(frozen=True)
class FaceModels:
    """The converted models and the tensor names the page feeds and reads.

    Attributes:
      detector: path of the full-range BlazeFace as ONNX.
      landmarks: path of the 478-point landmark model as ONNX.
      names: {"detector": {"input", "regressors", "scores"},
        "landmarks": {"input", "landmarks", "presence"}}.
    """
    detector: str
    landmarks: str
    names: dict


def cache_dir() -> str:
    """Where converted models are kept: a folder beside the model cache (not created here)."""
    return os.path.join(assets.cache_dir(), "onnx")


def _converter_version() -> str:
    try:
        return importlib.metadata.version("tf2onnx")
    except importlib.metadata.PackageNotFoundError as e:
        raise errors.InputNotFoundError(
            "the web page's face finder needs tf2onnx to convert MediaPipe's models: "
            "pip install -r requirements.txt") from e


def converted(tflite: bytes, name: str, source: str, out_dir: str | None = None) -> str:
    """The ONNX file of one .tflite model, converted now unless an earlier run did.

    Args:
      tflite: the model's bytes.
      name: a file name stem for the result.
      source: where the bytes come from, for messages.
      out_dir: the cache folder; default `cache_dir()`.

    Returns:
      The .onnx path.

    Raises:
      errors.InvalidInputError: the bytes are not a model tf2onnx can convert.
    """
    import onnx  # noqa: F401 (fails early and clearly where onnx is missing)

    version = _converter_version()
    key = hashlib.sha256(tflite + f"\0tf2onnx {version} opset {OPSET}".encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    path = os.path.join(out_dir, f"{name}-{key}.onnx")
    if os.path.isfile(path):
        return path
    os.makedirs(out_dir, exist_ok=True)
    from tf2onnx import convert  # imports TensorFlow: only when a model must be converted

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = os.path.join(tmp, name + ".tflite")
        with open(src, "wb") as f:  # writer-policy: exempt (scratch input in a private temp folder)
            f.write(tflite)
        dst = os.path.join(tmp, name + ".onnx")
        try:
            convert.from_tflite(src, opset=OPSET, output_path=dst)
        except Exception as e:  # tf2onnx raises anything from a flatbuffer parse to a graph error
            raise errors.InvalidInputError(
                f"{source}: not a TFLite model that converts to ONNX ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})") from e
        # Whole or not at all, also when two servers convert at once: the name is the content's
        # hash, so a file already there holds the same model.
        os.replace(dst, path)  # writer-policy: exempt (the model cache, named by content hash)
    return path


def _io_names(path: str, source: str, outputs: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """The input's name and the output names matched by their static shapes.

    Args:
      path: the converted model.
      source: its .tflite, for messages.
      outputs: {key: shape without the batch dimension}.

    Raises:
      errors.InvalidInputError: the graph lacks one of the outputs.
    """
    import onnx  # only when a conversion is checked: the page's server needs it nowhere else

    graph = onnx.load(path, load_external_data=False).graph
    shapes = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim[1:])
              for o in graph.output}
    names = {"input": graph.input[0].name}
    for key, shape in outputs.items():
        hits = [n for n, s in shapes.items() if s == shape]
        if len(hits) != 1:
            raise errors.InvalidInputError(
                f"{source}: expected one output of shape [*, {', '.join(map(str, shape))}], "
                f"outputs are {shapes}")
        names[key] = hits[0]
    return names


def face_models(landmarker_path: str, detector_path: str, out_dir: str | None = None) -> FaceModels:
    """Both models converted (or found in the cache), with the names the page needs.

    Args:
      landmarker_path: face_landmarker.task (its landmark model is used).
      detector_path: face_detection_full_range.tflite.
      out_dir: the cache folder; default `cache_dir()`.
    """
    lm_source = f"{landmarker_path} ({mesh.LANDMARK_MODEL})"
    with open(detector_path, "rb") as f:
        det = converted(f.read(), "face_detection_full_range", detector_path, out_dir)
    lm = converted(mesh.read_task_member(landmarker_path, mesh.LANDMARK_MODEL),
                   "face_landmarks_detector", lm_source, out_dir)
    names = {
        "detector": _io_names(det, detector_path, {"regressors": (blazeface.NUM_ANCHORS, 16),
                                                   "scores": (blazeface.NUM_ANCHORS, 1)}),
        "landmarks": _io_names(lm, lm_source, {"landmarks": (1, 1, mesh.NUM_LANDMARKS * 3),
                                               "presence": (1, 1, 1)}),
    }
    return FaceModels(detector=det, landmarks=lm, names=names)


def finder_settings(landmarker_path: str | None = None) -> dict:
    """The Python finder's numbers, for the page's port of it (web/src/faces.js).

    Args:
      landmarker_path: face_landmarker.task (its canonical face gives the
        landmarks' mirror order); default `assets.resolve_model`.
    """
    return {
        "detector": {
            "input_size": blazeface.INPUT_SIZE, "grid": blazeface.GRID,
            "num_keypoints": blazeface.NUM_KEYPOINTS, "right_eye": blazeface.RIGHT_EYE,
            "left_eye": blazeface.LEFT_EYE, "score_clip": blazeface.SCORE_CLIP,
            "nms_iou": blazeface.NMS_IOU, "min_input_face_px": blazeface.MIN_INPUT_FACE_PX,
            "tile_overlap": blazeface.TILE_OVERLAP,
        },
        "mesh": {
            "input_size": mesh.INPUT_SIZE, "num_landmarks": mesh.NUM_LANDMARKS,
            "roi_scale": mesh.ROI_SCALE, "right_eye_outer": mesh.RIGHT_EYE_OUTER,
            "left_eye_outer": mesh.LEFT_EYE_OUTER,
        },
        "cascade": {
            "min_presence": cascade.MIN_PRESENCE, "max_eye_offset": cascade.MAX_EYE_OFFSET,
            "landmarker_max_eye_offset": cascade.LANDMARKER_MAX_EYE_OFFSET,
            "confirm_score": cascade.CONFIRM_SCORE,
            "strong_confirm_score": cascade.STRONG_CONFIRM_SCORE,
            "eye_to_box": list(cascade.EYE_TO_BOX), "upright_scale": cascade.UPRIGHT_SCALE,
            "max_checks": cascade.MAX_CHECKS, "same_face_iou": cascade.SAME_FACE_IOU,
            "min_face_px": cascade.DEFAULT_MIN_FACE_PX,
            "mirror_keypoints": list(cascade.MIRROR_KEYPOINTS),
            "tight_crop_scale": cascade.TIGHT_CROP_SCALE,
            "tight_face_share": cascade.TIGHT_FACE_SHARE,
        },
        "landmarks": {
            "nose_tip": lmk.NOSE_TIP, "left_eye_corners": list(lmk.LEFT_EYE_CORNERS),
            "right_eye_corners": list(lmk.RIGHT_EYE_CORNERS),
            "mirror_order": [int(i) for i in lmk.mirror_order(landmarker_path)],
        },
        "face_scale_span": detect.FACE_SCALE_SPAN,
        "video": {"full_range_every": detect.FULL_RANGE_EVERY,
                  "min_track_presence": detect.MIN_TRACK_PRESENCE},
    }
