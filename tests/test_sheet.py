"""benchmarks.sheet: one row per face in the right columns, a row for every photo without one."""

import shutil

import numpy as np
import pytest

from benchmarks import sheet_lib
from deocc_jax import errors
from deocc_jax.faces import sample_photos
from tests import pairs_fixture as pf

MAGENTA = np.array([255, 0, 255])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A real portrait, a real photo without a face, and a truncated file, in sheet order."""
    folder = tmp_path_factory.mktemp("sheet_photos")
    shutil.copyfile(sample_photos.face_photo_paths()[0], folder / "a_face.png")
    shutil.copyfile(sample_photos.no_face_photo_path(), folder / "b_cat.png")
    with open(sample_photos.face_photo_paths()[0], "rb") as f:
        (folder / "c_broken.png").write_bytes(f.read()[:200])
    return folder


@pytest.fixture(scope="module")
def rows(photos):
    paths = sheet_lib.pick_photos(str(photos), max_photos=10, seed=0)
    return sheet_lib.build_rows(pf.Painter(), paths, log=lambda s: None)


def _tile(sheet, row, column, tile):
    y, x = sheet_lib.tile_origin(row, column, tile)
    return sheet[y:y + tile, x:x + tile]


def _magenta_share(tile):
    return float(np.mean(np.all(np.abs(tile.astype(int) - MAGENTA) < 40, axis=-1)))


def test_every_photo_has_a_row_with_its_caption(rows):
    assert len(rows) == 3
    assert rows[0].caption == "a_face.png: face 1 of 1"
    assert rows[1].caption.startswith("b_cat.png: no face found (")
    assert rows[2].caption.startswith("c_broken.png: cannot be read (")
    assert all(t is not None for t in rows[0].tiles)
    # The faceless photo is shown in the photo column only; the unreadable one nowhere.
    assert [t is not None for t in rows[1].tiles] == [False, False, False, True, False]
    assert all(t is None for t in rows[2].tiles)


def test_columns_hold_crop_output_mask_photo_and_pasted_back(rows):
    tile = sheet_lib.tile_size(pf.Painter.resolution)
    assert tile == 256  # 32 px crops, each model pixel an 8x8 block
    sheet = sheet_lib.render(rows, pf.Painter.resolution)
    assert sheet.shape == sheet_lib.sheet_shape(3, tile) == (
        sheet_lib.HEADER_PX + 3 * (sheet_lib.CAPTION_PX + tile + sheet_lib.GAP_PX),
        5 * tile + 4 * sheet_lib.GAP_PX, 3)
    crop, out, mask, photo, pasted = (_tile(sheet, 0, c, tile) for c in range(5))
    half = tile // 2
    # The painter keeps the crop's upper half, paints its lower half magenta and predicts it.
    np.testing.assert_array_equal(out[:half], crop[:half])
    assert _magenta_share(out[half:]) == 1.0 and _magenta_share(crop) < 0.01
    assert np.all(mask[half:] == 255) and np.all(mask[:half] == 0)
    # Pasted back: the same box of the photo, with the paint blended in where the mask was.
    assert _magenta_share(photo) < 0.01 and _magenta_share(pasted[half:]) > 0.2
    np.testing.assert_array_equal(pasted[:tile // 4], photo[:tile // 4])
    # The faceless photo's row: its thumbnail under "photo", empty tiles elsewhere.
    assert _tile(sheet, 1, 3, tile).std() > 10
    for c in (0, 1, 2, 4):
        assert np.all(_tile(sheet, 1, c, tile) == sheet_lib.EMPTY_TILE)


def test_same_inputs_same_sheet(photos):
    paths = sheet_lib.pick_photos(str(photos), max_photos=10, seed=0)
    a = sheet_lib.make_sheet(pf.Painter(), paths, log=lambda s: None)
    b = sheet_lib.make_sheet(pf.Painter(), paths, log=lambda s: None)
    assert sheet_lib.encode_png(a) == sheet_lib.encode_png(b)


def test_seed_picks_the_same_photos(photos):
    first = sheet_lib.pick_photos(str(photos), max_photos=2, seed=3)
    assert first == sheet_lib.pick_photos(str(photos), max_photos=2, seed=3)
    assert len(first) == 2 and first == sorted(first)
    assert len(sheet_lib.pick_photos(str(photos), max_photos=5, seed=3)) == 3


def test_existing_output_is_refused_before_the_model_loads(photos, tmp_path):
    out = tmp_path / "sheet.png"
    out.write_bytes(b"keep me")
    missing_model = str(tmp_path / "no_model")
    with pytest.raises(errors.OutputExistsError, match="--overwrite"):
        sheet_lib.run(missing_model, str(photos), str(out))
    assert out.read_bytes() == b"keep me"
    with pytest.raises(errors.InvalidInputError, match=r"\.png"):
        sheet_lib.run(missing_model, str(photos), str(tmp_path / "sheet.jpg"))
    # With --overwrite the output passes its checks, and the missing model is what stops it.
    with pytest.raises(errors.InputNotFoundError, match="no_model"):
        sheet_lib.run(missing_model, str(photos), str(out), overwrite=True)
    assert out.read_bytes() == b"keep me"


def test_binary_refuses_an_existing_output_in_one_line(photos, tmp_path):
    out = tmp_path / "sheet.png"
    out.write_bytes(b"keep me")
    proc = pf.run_binary("benchmarks.sheet", f"--input={photos}", f"--output={out}")
    pf.assert_one_line_error(proc, str(out), "--overwrite")
    assert out.read_bytes() == b"keep me"
