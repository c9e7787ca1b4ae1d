"""`python -m benchmarks.detection --output=benchmarks/results/detection.json`: face finding's
recall on real masked photos, false faces on photos with none, and cost (benchmarks/detection_lib.py
says how)."""

import os

from absl import app, flags

from benchmarks import common, detection_lib

_MASKED = flags.DEFINE_string("masked", os.path.join(common.SHARED, "data", "real_masked"),
                              "Real photos of people in masks.")
_FACES = flags.DEFINE_string("faces", os.path.join(common.SHARED, "data", "faces"), "Face photos.")
_MAX_FACES_PHOTOS = flags.DEFINE_integer("max_faces_photos", 0, "Photos of --faces used (0 = all).")
_SWEEP_PHOTOS = flags.DEFINE_integer("sweep_photos", 20, "Face photos of the min_face_px sweep.")
_LIVE = flags.DEFINE_bool("live", True, "Also measure the live pipeline's frames/s.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/detection.json", "JSON file to write.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = detection_lib.run(_MASKED.value, _FACES.value, max_faces_photos=_MAX_FACES_PHOTOS.value,
                                sweep_photos=_SWEEP_PHOTOS.value, live=_LIVE.value)
    record = {"benchmark": "detection", "machine": {"cpu_model": common.cpu_model(),
                                                    "cpu_cores_available": len(os.sched_getaffinity(0))},
              "code": common.code_state(), "results": results}
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, record)
        print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
