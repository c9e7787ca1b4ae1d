r"""Do a model's ONNX and LiteRT files compute what its SavedModel computes, run with no deocc code?

    python -m benchmarks.exports_agree --model=pretrained/deocc-realtime-128 \
        --output=benchmarks/results/exports_agree_deocc-realtime-128.json

Exports --model with `deocc_jax.export --format=saved_model,onnx,tflite --quantize=none` into a
temporary folder, then loads each file with its runtime's own API only (TensorFlow's
`tf.saved_model.load`, `onnxruntime.InferenceSession`, `ai_edge_litert.interpreter.Interpreter`):
no deocc runner, so what a user of those runtimes gets is what is measured. The inputs are the
embedded public-domain portraits aligned as at inference, each with and without a procedural
occluder (`launch/demo_photo.py`), at batch 1. Reported per runtime: the largest and 99.9th
percentile difference from the SavedModel in grey levels, the share of values that differ by more
than one, and the largest mask difference. The target: within 1 grey level.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile

import numpy as np
from absl import flags

from deocc_jax import errors
from deocc_jax.artifacts import export_lib
from deocc_jax.faces import sample_photos
from launch import demo_photo

_MODEL = flags.DEFINE_string("model", "pretrained/deocc-realtime-128", "A pretrained folder or workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Result JSON (default: print only).")


def _inputs(resolution: int) -> np.ndarray:
    """Aligned public-domain portraits, clean and with an occluder drawn on."""
    photos = sample_photos.face_photo_paths()
    with tempfile.TemporaryDirectory() as tmp:
        occluded = []
        for i, path in enumerate(photos):
            occluded.append(os.path.join(tmp, f"occluded_{i}.png"))
            demo_photo.occluded_demo_photo(path, occluded[-1], i, None)
        return sample_photos.aligned_faces(photos + occluded, resolution)


def _run_savedmodel(path: str, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    import tensorflow as tf
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return [{k: v.numpy() for k, v in fn(images=tf.constant(x[None])).items()} for x in images]


def _run_onnx(path: str, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, {"images": x[None]}))) for x in images]


def _run_litert(path: str, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    from ai_edge_litert import interpreter as litert
    runner = litert.Interpreter(model_path=path).get_signature_runner("serving_default")
    return [runner(images=x[None]) for x in images]


def compare(reference: list[dict], other: list[dict]) -> dict[str, float]:
    a = np.concatenate([r["deoccluded"] for r in reference]).astype(np.int32)
    b = np.concatenate([r["deoccluded"] for r in other]).astype(np.int32)
    diff = np.abs(a - b)
    mask_diff = max(float(np.abs(r["mask"] - o["mask"]).max()) for r, o in zip(reference, other))
    return {"max_grey_levels": int(diff.max()),
            "p99_9_grey_levels": float(np.percentile(diff, 99.9)),
            "share_over_1": float((diff > 1).mean()), "max_mask": mask_diff,
            "within_1_grey_level": bool(diff.max() <= 1)}


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_lib.export_model(_MODEL.value, tmp, formats=("saved_model", "onnx", "tflite"),
                                          quantize=("none",), platforms=("cpu",))
        images = _inputs(summary["resolution"])
        saved_dir = os.path.join(tmp, str(summary["step"]))
        onnx_path, = glob.glob(os.path.join(tmp, "*.onnx"))
        tflite_path, = glob.glob(os.path.join(tmp, "*.tflite"))
        reference = _run_savedmodel(saved_dir, images)
        result = {"model": _MODEL.value, "step": summary["step"],
                  "resolution": summary["resolution"], "num_images": len(images), "batch": 1,
                  "vs_savedmodel": {"onnx": compare(reference, _run_onnx(onnx_path, images)),
                                    "tflite_float32": compare(reference,
                                                              _run_litert(tflite_path, images))}}
    print(json.dumps(result, indent=2))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    errors.run(main)
