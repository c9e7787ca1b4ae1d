r"""Input-pipeline throughput: what grain delivers per core against what the training step eats.

  python -m benchmarks.input_pipeline --output=benchmarks/results/input_pipeline.json
  python -m benchmarks.input_pipeline --data_dir=DATA --configs=deocc --batch_size=16

Measures, on a data set prepared from real photos (`data_prep.build_dataset`, built once into
--data_dir when it is missing):

1. the single-thread cost per example of each stage the pipeline runs: ArrayRecord read, PNG
   decode of the four images (`features.decode_example`) and the augmentation
   (`input_pipeline.augment`: flip + colour jitter);
2. images/s of `input_pipeline.make_train_iterator` (shuffle, decode, augment, batch) with
   `config.data.num_threads` = each of --threads, after warm-up, and the process CPU time it
   used, giving images per CPU-second (the per-core rate, whatever the thread count);
3. images/s of one jitted training step of each --configs at the same resolution and batch
   (`train_lib.build_setup`, the trainer's own set-up; a real batch from the pipeline, median of
   --step_repeats) and of the same step fed by the pipeline, as the training loop runs it (next
   batch, `sharding.put_batch`, step).

The headroom `pipeline / step` says how many times faster the input is than its consumer; the
cores the input needs are `step images/s / per-core images/s`.
"""

import sys

from absl import app, flags

from benchmarks import common, input_pipeline_lib

_DATA = common.define_data_flags()
flags.adopt_module_key_flags(common)  # list them in this binary's --help
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Crop size of the data and the model.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per batch (pipeline and step).")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "config.data.num_threads values to time.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches per thread count.")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 4, "Untimed batches first (thread "
                                       "start-up).")
_STAGE_EXAMPLES = flags.DEFINE_integer("stage_examples", 64, "Examples for the per-stage costs.")
_CONFIGS = flags.DEFINE_list("configs", ["pix2pix", "deocc"],
                             "Training configs whose step consumption is measured ('' = none).")
_STEP_REPEATS = flags.DEFINE_integer("step_repeats", 5, "Timed training steps (median).")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file to write.")


def main(argv):
    del argv
    common.prepare_dataset(_DATA.data_dir.value, photos_dir=_DATA.photos.value,
                           max_photos=_DATA.max_photos.value, resolution=_RESOLUTION.value,
                           occluders_dir=_DATA.occluders_dir.value or None)
    rec = input_pipeline_lib.run_benchmark(
        _DATA.data_dir.value, _RESOLUTION.value, _BATCH_SIZE.value,
        [int(t) for t in _THREADS.value], _BATCHES.value, _WARMUP_BATCHES.value,
        _STAGE_EXAMPLES.value, [c for c in _CONFIGS.value if c], _STEP_REPEATS.value)
    rec["command"] = " ".join(["python -m benchmarks.input_pipeline"] + sys.argv[1:])
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, rec)
    print(input_pipeline_lib.summary_line(rec))


if __name__ == "__main__":
    app.run(main)
