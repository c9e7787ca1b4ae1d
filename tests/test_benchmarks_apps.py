"""The application benchmarks' logic: input-pipeline timing on real data, the quality table.

The benchmarks themselves run for minutes and are not part of CI; these check that what they
measure and report is computed from the real pipeline and the real configs.
"""

import json

import pytest

from benchmarks import common, input_pipeline, quality
from tests import pairs_fixture


def test_input_pipeline_benchmark_times_the_real_pipeline(tmp_path_factory, faces_dir):
    data = pairs_fixture.tiny_dataset(tmp_path_factory, faces_dir)  # 32 px, 16 train examples
    rec = input_pipeline.run_benchmark(str(data), 32, 4, [1, 2], batches=3, warmup=1,
                                       stage_examples=4, configs=[], step_repeats=1)
    assert [p["threads"] for p in rec["pipeline"]] == [1, 2]
    for p in rec["pipeline"]:
        assert p["images"] == 12
        assert p["images_per_s"] > 0 and p["images_per_cpu_s"] > 0
    st = rec["stages_one_thread"]
    assert st["examples"] == 4 and st["decode_ms"] > 0 and st["augment_ms"] > 0
    assert st["total_ms"] == pytest.approx(st["read_ms"] + st["decode_ms"] + st["augment_ms"])
    assert rec["dataset"]["records_per_split"]["train"] == 16
    assert rec["pipeline_images_per_cpu_s"] == max(p["images_per_cpu_s"] for p in rec["pipeline"])
    json.dumps(rec)
    assert "2 thread(s)" in input_pipeline.summary_line(rec)


def test_input_pipeline_benchmark_refuses_a_resolution_the_data_lacks(tmp_path_factory, faces_dir):
    data = pairs_fixture.tiny_dataset(tmp_path_factory, faces_dir)
    with pytest.raises(ValueError, match="prepared at 32 px"):
        input_pipeline.run_benchmark(str(data), 64, 4, [1], batches=1, warmup=0,
                                     stage_examples=1, configs=[], step_repeats=1)


_FAKE = {
    "unet_l1": {"psnr": 27.1, "ssim": 0.91, "mse": 0.002, "masked_psnr": 19.5, "masked_ssim": 0.61,
                "masked_mse": 0.011, "mask_iou": None},
    "deocc": {"psnr": 28.0, "ssim": 0.93, "mse": 0.0016, "masked_psnr": 21.25, "masked_ssim": 0.70,
              "masked_mse": 0.0075, "mask_iou": 0.6},
    "opencv_telea": {"psnr": 22.0, "ssim": 0.85, "mse": 0.006, "masked_psnr": 14.0,
                     "masked_ssim": 0.35, "masked_mse": 0.04, "mask_iou": None},
}


def test_quality_table_rows_and_values():
    runs = {"unet_l1": {"steps": 120, "train_s": 240.4}, "deocc": {"steps": 80, "train_s": 239.6}}
    table = quality.quality_table(_FAKE, runs, ["unet_l1", "deocc", "opencv_telea"])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | steps | train s | PSNR (dB) | SSIM |")
    assert len(lines) == 5
    assert lines[2] == "| unet_l1 | 120 | 240 | 27.10 | 0.9100 | 0.00200 | 19.50 | 0.6100 | 0.01100 | – |"
    assert lines[3].endswith("| 21.25 | 0.7000 | 0.00750 | 0.6000 |")
    assert lines[4].startswith("| opencv_telea | – | – | 22.00 |")
    assert quality.best_by(_FAKE, "masked_psnr") == "deocc"
    assert quality.best_by(_FAKE, "masked_mse", higher=False) == "deocc"


def _apply_overrides(config, cmd):
    """Sets every --config.KEY=VALUE of `cmd` on `config`; KeyError for a key the config lacks."""
    for arg in cmd:
        if arg.startswith("--config.") and "=" in arg:
            key, value = arg[len("--config."):].split("=", 1)
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            old = node[leaf]  # raises for a key the config does not have
            node[leaf] = type(old)(value) if old is not None and not isinstance(old, str) else value


@pytest.mark.parametrize("name", ["unet_l1", "pix2pix", "deocc"])
def test_budget_trainer_command_is_valid_for_every_config(name):
    cmd = quality.trainer_command(name, "/tmp/w", "/tmp/d", resolution=128, batch_size=8,
                                  max_steps=1000, schedules="budget", seed=3)
    assert cmd[1:3] == ["-m", "deocc_jax.train"]
    config = common.load_config(name, 256, 32)
    _apply_overrides(config, cmd)
    assert (config.resolution, config.batch_size, config.num_train_steps, config.seed) == (128, 8, 1000, 3)
    assert config.optim.g.schedule == "constant" and config.optim.g.warmup_steps == 0
    assert config.optim.ema_decay == 0.0 and config.eval_every_steps == 0
    kept = common.load_config(name, 256, 32)
    _apply_overrides(kept, quality.trainer_command(name, "/tmp/w", "/tmp/d", resolution=128,
                                                   batch_size=8, max_steps=1000,
                                                   schedules="config", seed=0))
    assert kept.optim.g.schedule == common.load_config(name, 256, 32).optim.g.schedule
    assert kept.optim.ema_decay == common.load_config(name, 256, 32).optim.ema_decay
