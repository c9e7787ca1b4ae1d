"""Model asset resolution: explicit path > $DEOCC_ASSETS_DIR > cache > verified download."""

import dataclasses
import hashlib
import pathlib

import pytest

from deocc_jax.io import assets

NAME = "blaze_face_short_range.tflite"


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env dir, an empty cache under tmp_path; returns the cache folder."""
    monkeypatch.delenv(assets.ENV_ASSETS_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return pathlib.Path(assets.cache_dir())


def test_explicit_path_wins_and_missing_explicit_path_is_an_error(isolated, tmp_path, monkeypatch, shared_dir):
    monkeypatch.setenv(assets.ENV_ASSETS_DIR, str(shared_dir / "models"))
    mine = tmp_path / "mine.tflite"
    mine.write_bytes(b"x")
    assert assets.resolve_model(NAME, str(mine)) == str(mine)
    with pytest.raises(assets.AssetError, match="does-not-exist"):
        assets.resolve_model(NAME, str(tmp_path / "does-not-exist.tflite"))


def test_env_dir_then_cache(isolated, monkeypatch, shared_dir, tmp_path):
    monkeypatch.setenv(assets.ENV_ASSETS_DIR, str(shared_dir / "models"))
    assert assets.resolve_model(NAME, download=False) == str(shared_dir / "models" / NAME)
    # An env dir without the file falls through to the cache.
    monkeypatch.setenv(assets.ENV_ASSETS_DIR, str(tmp_path))
    isolated.mkdir(parents=True)
    (isolated / NAME).write_bytes(b"cached")
    assert assets.resolve_model(NAME, download=False) == str(isolated / NAME)


def test_download_verifies_sha256_into_cache(isolated, shared_dir):
    # A file:// URL stands in for the official one: no network in tests, but
    # the real bytes must match the pinned sha256.
    src = shared_dir / "models" / NAME
    path = assets.resolve_model(NAME, url=src.as_uri())
    assert path == str(isolated / NAME)
    assert assets.sha256_file(path) == assets.MODELS[NAME].sha256
    # Second call: served from the cache even with a broken URL.
    assert assets.resolve_model(NAME, url="file:///nonexistent/x") == path


def test_sha_mismatch_discards_the_download(isolated, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not the model")
    with pytest.raises(assets.AssetError, match="sha256") as e:
        assets.resolve_model(NAME, url=bad.as_uri())
    assert hashlib.sha256(b"not the model").hexdigest() in str(e.value)
    assert not (isolated / NAME).exists()
    assert not list(isolated.glob("*.part"))


def test_offline_error_says_where_to_put_the_file(isolated):
    with pytest.raises(assets.AssetError) as e:
        assets.resolve_model("face_landmarker.task", url="http://deocc-no-such-host.invalid/m.task",
                             timeout_s=5)
    msg = str(e.value)
    assert "DEOCC_ASSETS_DIR" in msg and str(isolated) in msg
    assert assets.MODELS["face_landmarker.task"].url in msg
    with pytest.raises(assets.AssetError, match="disabled"):
        assets.resolve_model("face_landmarker.task", download=False)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        assets.resolve_model("nope.task")


def test_pinned_metadata_matches_shared_models(shared_dir):
    for asset in assets.MODELS.values():
        f = shared_dir / "models" / asset.name
        assert f.stat().st_size == asset.num_bytes
        assert dataclasses.asdict(asset)["sha256"] == assets.sha256_file(str(f))
