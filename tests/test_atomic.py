"""deocc_jax.io.atomic: files and folders appear only complete."""

import pytest

from deocc_jax import errors
from tests import pairs_fixture as pf


def test_atomic_file_keeps_the_old_content_when_writing_fails(tmp_path, monkeypatch):
    from deocc_jax.io import atomic
    path = tmp_path / "photo.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(path), overwrite=True) as f:
            f.write(b"half of the new ")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and pf.listing(tmp_path) == ["photo.png"]
    atomic.write_bytes(str(path), b"new", overwrite=True)
    assert path.read_bytes() == b"new" and pf.listing(tmp_path) == ["photo.png"]
    # Folders: replaced only when asked, by an atomic exchange or (where the OS
    # cannot) by moving the old one aside first; nothing is left behind either way.
    for can_exchange in (True, False):
        final, staged = tmp_path / "v" / "7", tmp_path / "v" / ".7.partial-1-x"
        if not final.exists():
            final.mkdir(parents=True)
            (final / "model.pb").write_bytes(b"old model")
        staged.mkdir()
        (staged / "model.pb").write_bytes(b"new model")
        with pytest.raises(errors.OutputExistsError, match="--overwrite"):
            atomic.publish_directory(str(staged), str(final))
        if not can_exchange:
            monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
        atomic.publish_directory(str(staged), str(final), replace=True)
        assert (final / "model.pb").read_bytes() == b"new model"
        assert pf.listing(tmp_path / "v") == ["7", "7/model.pb"]
        (final / "model.pb").write_bytes(b"old model")
