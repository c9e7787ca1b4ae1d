"""`deocc_jax.infer_beam`: infer's outputs byte for byte on DirectRunner, counters, Dataflow dry run."""

import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.restoration import infer_lib
from deocc_jax.serving import beam_job

REPO = pathlib.Path(__file__).resolve().parents[1]
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
SAMPLE = ["0.jpg", "1.jpg", "10.jpg", "100.jpg", "104.jpg", "106.jpg"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, faces_dir) -> pathlib.Path:
    """Six photos of faces/, one without a face, one truncated."""
    folder = tmp_path_factory.mktemp("archive")
    for name in SAMPLE:
        shutil.copy(faces_dir / name, folder / name)
    ramp = np.tile(np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None], (60, 1, 3))
    Image.fromarray(ramp).save(folder / "noface.png")
    data = (faces_dir / "101.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


@pytest.fixture(scope="module")
def infer_out(photos, tmp_path_factory) -> tuple[pathlib.Path, list[dict]]:
    out = tmp_path_factory.mktemp("infer")
    model = predictors.open_predictor(None)
    report = infer_lib.process_photos(model, str(photos), str(out), quiet=True, log=lambda s: None)
    return out, report


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != beam_job.MANIFEST}


def _manifest(folder: pathlib.Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / beam_job.MANIFEST).read_text().splitlines()]
    return {pathlib.Path(r["input"]).name: r for r in rows}


def test_outputs_are_infers_byte_for_byte_and_counters_add_up(photos, infer_out, tmp_path):
    expected_dir, report = infer_out
    out = tmp_path / "beam"
    summary = beam_job.run_job(str(photos), str(out), pipeline_args=TWO_WORKERS)
    assert _files(out) == _files(expected_dir)
    assert len(_files(out)) == len(SAMPLE) + 1  # six restored, one copied, the truncated one not
    counts = summary["counters"]
    assert counts["read"] == len(SAMPLE) + 2
    assert (counts["restored"], counts.get("no_face"), counts["rejected"]) == (len(SAMPLE), 1, 1)
    assert counts["rejected_unreadable"] == 1
    manifest = _manifest(out)
    by_infer = {pathlib.Path(r["input"]).name: r for r in report}
    assert set(manifest) == set(by_infer)
    for name, row in manifest.items():
        want = by_infer[name]
        keys = ("status", "faces", "reason", "no_face_reason", "faces_too_small")
        assert {k: row.get(k) for k in keys} == {k: want.get(k) for k in keys}, name
        assert (row["output"] and pathlib.Path(row["output"]).name) == (
            want["output"] and pathlib.Path(want["output"]).name)
    # As infer: a second run refuses to replace the first one's outputs before it starts.
    with pytest.raises(errors.OutputExistsError, match="--overwrite"):
        beam_job.run_job(str(photos), str(out), pipeline_args=TWO_WORKERS)


def test_batched_model_calls_match_within_one_grey_level(photos, infer_out, tmp_path):
    expected_dir, _ = infer_out
    out = tmp_path / "beam"
    summary = beam_job.run_job(str(photos), str(out), beam_job.JobOptions(batch_photos=4),
                               pipeline_args=TWO_WORKERS)
    assert summary["counters"]["restored"] == len(SAMPLE)
    got, want = _files(out), _files(expected_dir)
    assert set(got) == set(want)
    for name in want:
        if name.endswith(".png") and name != "noface.png":
            a = np.asarray(Image.open(out / name), np.int16)
            b = np.asarray(Image.open(expected_dir / name), np.int16)
            assert np.abs(a - b).max() <= 1, name
        else:
            assert got[name] == want[name], name


def test_counters_that_do_not_add_up_fail_the_job():
    beam_job.check_counts({"read": 3, "restored": 2, "rejected": 1, "rejected_unreadable": 1})
    with pytest.raises(RuntimeError, match="do not add up"):
        beam_job.check_counts({"read": 3, "restored": 2})
    with pytest.raises(RuntimeError, match="do not add up"):
        beam_job.check_counts({"read": 2, "restored": 1, "rejected": 1})


def test_documented_dataflow_command_passes_a_dry_run():
    doc = (REPO / "docs" / "serving.md").read_text()
    match = re.search(r"python -m deocc_jax\.infer_beam ((?:\\\n|[^\n`])*--runner=DataflowRunner"
                      r"(?:\\\n|[^\n`])*)", doc)
    assert match, "docs/serving.md shows no Dataflow command for infer_beam"
    args = shlex.split(match.group(1).replace("\\\n", " "))
    proc = subprocess.run([sys.executable, "-m", "deocc_jax.infer_beam", *args, "--dry_run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "options valid for DataflowRunner" in proc.stdout, proc.stdout[-2000:]
    assert "Restore" in proc.stdout and "Manifest" in proc.stdout
    # A Dataflow option Beam rejects fails the dry run with one line, exit 2.
    bad = [a for a in args if not a.startswith("--project=")] + ["--project=Not A Project"]
    proc = subprocess.run([sys.executable, "-m", "deocc_jax.infer_beam", *bad, "--dry_run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: Beam options")
