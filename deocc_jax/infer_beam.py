r"""De-occludes a photo archive with Apache Beam: `infer`'s photo pipeline, one output per input.

    python -m deocc_jax.infer_beam --input='photos/*.jpg' --output=restored/ \
        --direct_num_workers=2 --direct_running_mode=multi_threading
    python -m deocc_jax.infer_beam --input='gs://BUCKET/photos/*.jpg' --output=gs://BUCKET/restored \
        --runner=DataflowRunner --project=PROJECT --region=REGION \
        --temp_location=gs://BUCKET/tmp --sdk_container_image=IMAGE --sdk_location=container

Writes what `python -m deocc_jax.infer` writes for each photo (same names, same bytes
with the default --batch_photos=1) plus manifest.jsonl (input, output, faces, status,
and the reason for a rejected photo), and prints the counters (read = restored + no
face + rejected, by reason). Flags absl does not know (--runner, --project, ...) are
Beam's. --dry_run validates the Beam options and builds the job without running it.
"""

import json
import logging
import os

from absl import flags

from deocc_jax import errors
from deocc_jax.artifacts import loading
from deocc_jax.restoration import infer_lib
from deocc_jax.serving import beam_job

_D = beam_job.JobOptions()
_INPUT = flags.DEFINE_string("input", None, "Photo, folder or glob (local, gs://, any Beam file "
                             "system).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (local or remote).", required=True)
_MODEL = flags.DEFINE_string("model", None, "Workdir, pretrained folder, export folder, .onnx or "
                             ".tflite, as the workers see it (default: the shipped model).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", f"For workdirs: {loading.CHECKPOINT_CHOICES}.")
_BATCH = flags.DEFINE_integer("batch_photos", _D.batch_photos, "Photos whose face crops share one "
                              "model call (1: byte-identical to infer; more: faster, a pixel may "
                              "differ by one grey level).")
_MAX_FACES = flags.DEFINE_integer("max_faces", _D.max_faces, "Most faces handled per photo.")
_MIN_CONF = flags.DEFINE_float("min_confidence", _D.min_confidence, "MediaPipe detection "
                               "confidence threshold.")
_MIN_FACE = flags.DEFINE_float("min_face_px", _D.min_face_px, "Smallest face restored (its box's "
                               "longer side, pixels).")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", infer_lib.DEFAULT_MAX_PIXELS, "Refuse photos with "
                                   "more pixels than this (rejected as too_large).", lower_bound=1)
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task on the "
                                  "workers (default: $DEOCC_ASSETS_DIR, then the cache).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the outputs of an earlier run (else "
                               "refused before the job starts).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate the Beam options and build the job; "
                             "read, write and submit nothing.")


def main(argv):
    options = beam_job.JobOptions(
        model=_MODEL.value, checkpoint=loading.parse_checkpoint(_CHECKPOINT.value),
        batch_photos=_BATCH.value, max_faces=_MAX_FACES.value, min_confidence=_MIN_CONF.value,
        min_face_px=_MIN_FACE.value, max_pixels=_MAX_PIXELS.value, landmarker_model=_LANDMARKER.value)
    summary = beam_job.run_job(_INPUT.value, _OUTPUT.value, options, pipeline_args=argv[1:],
                               overwrite=_OVERWRITE.value, dry_run=_DRY_RUN.value,
                               log=lambda line: print(line, flush=True))
    print(json.dumps(summary, sort_keys=True))


def _parse_flags(argv):
    # Flags absl does not know (--runner, --project, ...) are Beam's: keep them.
    return flags.FLAGS(argv, known_only=True)


def run():
    """Console-script entry point (`deocc-infer-beam`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().setLevel(logging.WARNING)
    errors.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
