"""The models deocc ships (pretrained/) and fine-tuning from a pretrained folder (init_from)."""

import json
import os

import jax
import numpy as np
import pytest

from deocc_jax import errors
from deocc_jax.artifacts import loading, predictors
from deocc_jax.faces import sample_photos
from deocc_jax.io import assets
from deocc_jax.training import train_lib
from tests import pairs_fixture

SHIPPED = sorted({predictors.DEFAULT_MODEL, predictors.DEFAULT_LIVE_MODEL})
MAX_BYTES = 40 * 2**20  # the project's limit per shipped model
REQUIRED_METHODS = ("model", "occluded_input", "opencv_telea", "opencv_ns")


def _rounded_to(variables: dict, dtype: str) -> dict:
    """float32 variables holding exactly the values a `dtype` copy stores (what ships)."""
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype).astype(np.float32),
                        jax.device_get(variables))


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _face_crops(resolution: int, n: int = 2) -> np.ndarray:
    """Public-domain portraits (the quickstart's), aligned: real faces, no dataset photo."""
    return sample_photos.aligned_faces(sample_photos.face_photo_paths()[:n], resolution)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_folder_is_complete_and_small(name):
    path = predictors.default_model_path(name)
    assert _folder_bytes(path) < MAX_BYTES
    with open(os.path.join(path, loading.PRETRAINED_FILE)) as f:
        meta = json.load(f)
    assert meta["name"] == name and meta["param_dtype"] == "float16" and meta["mode"] == "blind"
    assert meta["sha256"] == assets.sha256_file(os.path.join(path, loading.VARIABLES_FILE))
    card = open(os.path.join(path, "MODEL_CARD.md")).read()
    assert "non-commercial" in card and "launch.ship_model" in card
    with open(os.path.join(path, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(REQUIRED_METHODS) <= set(metrics["methods"])
    assert len(metrics["categories"]) >= 10 and metrics["num_examples"] >= 400
    # Pictures from the datasets are not redistributable: the only pictures are the demo and the
    # sheet of restorations, both of public-domain portraits with procedural occluders.
    pictures = [f for _, _, fs in os.walk(path) for f in fs if f.endswith((".png", ".jpg"))]
    assert sorted(pictures) == ["demo.png", "sheet_portraits.png"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_savedmodel_matches_the_parameters(name):
    """The SavedModel in export/ (what infer and TF Serving load) computes what the f16
    parameters compute under JAX: same signature, outputs within a grey level or two."""
    path = predictors.default_model_path(name)
    jax_model = predictors.open_predictor(path)
    (step,) = os.listdir(os.path.join(path, "export"))
    saved = predictors.open_predictor(os.path.join(path, "export", step))
    assert (saved.resolution, saved.guided) == (jax_model.resolution, False)
    faces = _face_crops(jax_model.resolution)
    a, b = jax_model(faces), saved(faces)
    assert b["deoccluded"].dtype == np.uint8 and b["deoccluded"].shape == faces.shape
    assert b["mask"].shape == faces.shape[:3] + (1,)
    diff = np.abs(a["deoccluded"].astype(int) - b["deoccluded"].astype(int))
    assert np.percentile(diff, 99.9) <= 2, diff.max()
    np.testing.assert_allclose(a["mask"], b["mask"], atol=0.02)


def test_init_from_reads_a_pretrained_folder_and_refuses_another_architecture(tmp_path):
    config, variables = pairs_fixture.random_tiny(32)
    loading.save_pretrained(str(tmp_path / "m"), config, variables, step=7, name="m")
    finetune = config.copy_and_resolve_references()
    finetune.init_from = str(tmp_path / "m")
    got = train_lib.initial_generator(finetune)
    want = _rounded_to(variables, "float16")
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    finetune.model.generator.base_width *= 2
    with pytest.raises(errors.InvalidInputError, match="does not match"):
        train_lib.initial_generator(finetune)


def test_its_config_fine_tunes_from_the_shipped_model():
    from configs import realtime
    config = realtime.get_config()
    config.init_from = predictors.default_model_path(predictors.DEFAULT_MODEL)
    assert train_lib.initial_generator(config) is not None


def test_shipping_again_keeps_the_hand_written_card(tmp_path):
    out, new = tmp_path / "m", tmp_path / "m.partial"
    out.mkdir()
    (out / loading.CARD_FILE).write_text("hand-written")
    (out / "generator.msgpack").write_text("old")
    new.mkdir()
    (new / "generator.msgpack").write_text("new")
    lines = []
    loading.replace_keeping_card(str(new), str(out), lines.append)
    assert (out / loading.CARD_FILE).read_text() == "hand-written"
    assert (out / "generator.msgpack").read_text() == "new" and not new.exists()
    assert "update its numbers" in lines[0]
    fresh = tmp_path / "fresh.partial"
    fresh.mkdir()
    loading.replace_keeping_card(str(fresh), str(tmp_path / "fresh"), lines.append)
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == [] and len(lines) == 1
