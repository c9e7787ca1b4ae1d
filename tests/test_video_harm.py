"""benchmarks.video_harm: the clip, the changed-share measure and both video paths."""

import numpy as np
import pytest

from tests import pairs_fixture


class _FarPainter(pairs_fixture.Painter):
    """Predicts part of each crop as occluded and paints it far from every pixel's grey level.

    The part is 255 where the input is dark and 0 where it is light, so every painted pixel
    moves by at least 127 grey levels whatever the skin. `half` is "lower" (from 0.6 of the
    crop's height down: the mouth, about 0.7-0.8 in the aligned crop) or "upper" (above 0.6:
    the eyes, about 0.44-0.49); the blend grows either by about 0.06.
    """

    def __init__(self, half: str):
        super().__init__()
        self.half = half

    def __call__(self, images, masks=None):
        out = super().__call__(images, masks)
        r = images.shape[1]
        split = int(0.6 * r)
        rows = slice(split, None) if self.half == "lower" else slice(0, split)
        mask = np.zeros_like(out["mask"])
        mask[:, rows] = 1.0
        grey = images.astype(np.float32).mean(-1, keepdims=True)
        far = np.where(grey < 128, 255, 0).astype(np.uint8).repeat(3, -1)
        painted = images.copy()
        painted[:, rows] = far[:, rows]
        return {"deoccluded": painted, "mask": mask}


class _Identity(pairs_fixture.Painter):
    """Predicts nothing and changes nothing: a model with no harm."""

    def __call__(self, images, masks=None):
        n, r = images.shape[:2]
        return {"deoccluded": images.copy(), "mask": np.zeros((n, r, r, 1), np.float32)}


def test_changed_shares_counts_moves_above_the_level_per_region():
    from benchmarks import video_harm_lib as vh
    ref = np.full((60, 80, 3), 100, np.uint8)
    out = ref.copy()
    face = np.zeros((60, 80), bool)
    face[10:50, 20:60] = True                     # 1600 px
    eyes = np.zeros_like(face)
    eyes[15:25, 22:38] = True                     # inside the changed left half
    mouth = np.zeros_like(face)
    mouth[35:45, 45:55] = True                    # in the right half: only a small move
    out[10:50, 20:40] = 140                       # +40: changed (left half of the face)
    out[10:50, 40:60] = 120                       # +20: below 30 grey levels, not changed
    out[0:5, 0:5] = 255                           # outside every region
    s = vh.changed_shares(out, ref, {"face": face, "eyes": eyes, "mouth": mouth})
    assert s["face"] == pytest.approx(0.5)
    assert s["eyes"] == pytest.approx(1.0)
    assert s["mouth"] == pytest.approx(0.0)
    rows = [{"face_found": True, "face": f, "eyes": 0.0, "mouth": 0.0, "untouched": None,
             "mask_area": None} for f in (0.0, 0.005, 0.01, 0.2)]
    rows.append({"face_found": False, "face": None, "eyes": None, "mouth": None,
                 "untouched": None, "mask_area": None})
    summary = vh.summarize(rows)
    assert summary["frames_with_face"] == 4 and summary["frames_at_most_1pct"] == 0.75
    assert summary["face_changed_mean"] == pytest.approx(0.05375)


def test_pan_and_clip_stay_inside_the_canvas_and_move_smoothly():
    from benchmarks import video_harm_lib as vh
    off = vh.pan_offsets(90)
    assert off.min() == 0 and off[:, 0].max() == 160 and off[:, 1].max() == 120
    assert tuple(off[0]) == (0, 0) and np.abs(np.diff(off, axis=0)).max() <= 9
    photo = np.arange(30 * 20 * 3, dtype=np.uint8).reshape(30, 20, 3)
    frames = vh.clip_frames(photo, 5, canvas=(40, 30), window=(32, 24))
    assert frames.shape == (5, 24, 32, 3)
    kept = vh.fit_canvas(photo, (40, 30), "keep")  # 20x30 fits the height: 10 px each side
    assert kept.shape == (30, 40, 3) and np.array_equal(kept[:, 10:30], photo)
    assert np.array_equal(kept[:, 0], photo[:, 0]) and np.array_equal(kept[:, 39], photo[:, -1])
    with pytest.raises(Exception, match="larger than the canvas"):
        vh.pan_offsets(3, canvas=(40, 30), window=(48, 24))


def test_video_paths_measure_what_a_painter_changes(tmp_path):
    from benchmarks import video_harm_lib as vh
    from deocc_jax.faces import sample_photos
    photo = sample_photos.face_photo_paths()[0]
    settings = vh.Settings(frames=6, canvas=(400, 300), window=(320, 240))
    models = [("lower", _FarPainter("lower")), ("upper", _FarPainter("upper")),
              ("none", _Identity())]
    record = vh.run(models, [photo], str(tmp_path), settings, log=lambda s: None)
    for path in ("live", "infer"):  # infer's output is re-encoded: the painter shows through
        by = {m["label"]: m["paths"][path]["overall"] for m in record["models"]}
        assert by["lower"]["frames_with_face"] == 6
        assert by["lower"]["mouth_changed_mean"] > 0.9 > 0.2 > by["lower"]["eyes_changed_mean"]
        assert by["upper"]["eyes_changed_mean"] > 0.9 > 0.2 > by["upper"]["mouth_changed_mean"]
        for label in ("lower", "upper"):
            assert 0.2 < by[label]["face_changed_mean"] < 0.9
            assert by[label]["frames_at_most_1pct"] == 0.0
        assert by["lower"]["mask_area_mean"] == pytest.approx(1 - 19 / 32)
        assert by["upper"]["mask_area_mean"] == pytest.approx(19 / 32)
        assert by["none"]["face_changed_mean"] == 0.0 and by["none"]["frames_at_most_1pct"] == 1.0
        assert by["none"]["meets_target"] and by["none"]["mask_area_mean"] == 0.0
    live = {m["label"]: m["paths"]["live"]["overall"] for m in record["models"]}
    assert live["none"]["frames_untouched"] == 1.0 and live["lower"]["frames_untouched"] == 0.0
    assert live["none"]["frames_untouched_when_restored"] == 1.0
    assert record["models"][0]["paths"]["infer"]["overall"]["frames_untouched"] is None
    assert record["codec_only"]["overall"]["face_changed_mean"] < 0.01
    assert len(record["strips"]) == 6
