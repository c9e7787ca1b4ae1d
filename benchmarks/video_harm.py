"""`python -m benchmarks.video_harm`: what a model does to faces with nothing over them in video,
through the live and infer paths (benchmarks/video_harm_lib.py says how)."""

import os

from absl import flags

from benchmarks import common, video_harm_lib
from deocc_jax import errors
from deocc_jax.restoration import smoothing

_MODEL = flags.DEFINE_string("model", None, "Model: a workdir, pretrained folder or export "
                             "(default: the shipped one).")
_COMPARE = flags.DEFINE_multi_string("compare", [], "Other models measured on the same clips.")
_FACES = flags.DEFINE_string("faces", common.DEFAULT_PHOTOS, "Face photo folder.")
_PHOTOS = flags.DEFINE_list("photos", [], "Photos (names in --faces, or paths); default "
                            f"{video_harm_lib.DEFAULT_PHOTO} and {video_harm_lib.NUM_PHOTOS - 1} "
                            "others spread over --faces.")
_FRAMES = flags.DEFINE_integer("frames", video_harm_lib.FRAMES, "Frames per clip.", lower_bound=2)
_FPS = flags.DEFINE_float("fps", video_harm_lib.FPS, "Clip frame rate.", lower_bound=1)
_ASPECT = flags.DEFINE_enum("aspect", "stretch", ["stretch", "keep"], "stretch: the photo "
                            "resized to 800x600 as it is; keep: its aspect kept, edges repeated.")
_BETA = flags.DEFINE_float("beta", smoothing.DEFAULT_BETA, "One-euro speed coefficient of both "
                           "paths' landmark smoothing (infer's and live's --beta).")
_PATHS = flags.DEFINE_list("paths", list(video_harm_lib.PATHS), "Video paths: live, infer.")
_SCRATCH = flags.DEFINE_string("scratch_dir", "/tmp/deocc_video_harm", "Clips, outputs and the "
                               "frame strips (not the repository: the photos may not be "
                               "redistributed).")
_OUTPUT = flags.DEFINE_string("output", os.path.join(common.REPO, "benchmarks", "results",
                                                     "video_harm.json"), "Result JSON.")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    scratch = os.path.abspath(_SCRATCH.value)
    if scratch == common.REPO or scratch.startswith(common.REPO + os.sep):
        raise errors.InvalidInputError(f"--scratch_dir {_SCRATCH.value}: inside the repository; "
                                       "the photos and frames may not be redistributed")
    models = [("model", _MODEL.value)] + [(f"compare{i + 1}", m)
                                          for i, m in enumerate(_COMPARE.value)]
    result = video_harm_lib.run(
        models, video_harm_lib.resolve_photos(_PHOTOS.value, _FACES.value), scratch,
        video_harm_lib.Settings(frames=_FRAMES.value, fps=_FPS.value, paths=tuple(_PATHS.value),
                                aspect=_ASPECT.value, beta=_BETA.value))
    for m in result["models"]:
        for path, r in m["paths"].items():
            print(f"{m['label']} ({m['model']}) {path}: {r['overall']}")
    for name, png in result["strips"].items():
        print(f"frame strip ({name}): {png}")
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, result)
        print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    errors.run(main)
