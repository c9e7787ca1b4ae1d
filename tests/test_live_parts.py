"""The parts of the live path: hand-off slots, counters, restoration, stabiliser, tracker, flicker."""

import threading
import time

import numpy as np
import pytest

from deocc_jax.artifacts import loading, predictors
from deocc_jax.faces import sample_photos
from deocc_jax.restoration import infer_lib
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.streaming import clips, flicker, queues
from deocc_jax.restoration.stabilize import StabilizerOptions, TemporalStabilizer
from deocc_jax.streaming.stats import LiveStats, format_line
from deocc_jax.streaming.tracking import LandmarkTracker, TrackerOptions
from tests import pairs_fixture


def tiny_model(resolution=64, guided=False):
    """configs/tiny.py at `resolution`, random-initialised, behind the real JAX predictor."""
    config, variables = pairs_fixture.random_tiny(resolution, guided=guided)
    return predictors.JaxPredictor(loading.LoadedModel(config, variables, 0, "tiny-random",
                                                       "pretrained"))


class NoisyModel:
    """A blind stand-in whose output wobbles from call to call, as a GAN's does under input noise."""
    resolution, guided, description = 64, False, "noisy fake"

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __call__(self, images, masks=None):
        r = self.resolution
        mask = np.zeros((len(images), r, r, 1), np.float32)
        mask[:, r // 2:, :] = 1.0
        out = images.astype(np.float32) * 0.5 + 60 + self.rng.normal(0, 12, images.shape)
        return {"deoccluded": np.clip(out, 0, 255).astype(np.uint8), "mask": mask}


# ----------------------------------------------------------------------------- slots and counters


def test_slot_keeps_the_newest_item_and_counts_what_it_replaces():
    dropped = []
    slot = queues.Slot("model busy", on_drop=dropped.append)
    for i in range(5):
        slot.put(i)  # never blocks, whatever the consumer does
    assert slot.get() == 4 and dropped == [0, 1, 2, 3] and slot.dropped == 4
    with pytest.raises(TimeoutError):
        slot.get(timeout_s=0.05)
    slot.put(7)
    slot.close()
    assert slot.get() == 7  # what was waiting still comes out after close
    with pytest.raises(queues.Closed):
        slot.get()


def test_lossless_slot_blocks_the_producer_and_stops_on_request():
    stop = threading.Event()
    slot = queues.Slot("x", lossless=True, stop=stop)
    slot.put(1)
    got = []
    producer = threading.Thread(target=lambda: (slot.put(2), got.append("put 2")))
    producer.start()
    time.sleep(0.2)
    assert got == []  # waiting: the slot is full
    assert slot.get() == 1
    producer.join(2)
    assert got == ["put 2"] and slot.get() == 2
    slot.put(3)
    stop.set()
    with pytest.raises(queues.Stopped):
        slot.put(4)


def test_stats_account_for_every_frame():
    s = LiveStats()
    for _ in range(5):
        s.frame_in()
    s.drop("model busy", 2)
    now = time.perf_counter()
    for dt in (0.010, 0.020, 0.030):
        s.frame_out(now - dt, faces=1)
    with s.stage("model"):
        time.sleep(0.01)
    snap = s.snapshot()
    assert snap["frames_in"] == snap["frames_out"] + snap["dropped"] == 5
    assert 10 <= snap["latency_ms_p50"] < 40 and snap["latency_ms_p95"] >= snap["latency_ms_p50"]
    assert snap["stage_ms"]["model"] >= 10
    line = format_line(snap)
    assert "frames in 5, out 3, dropped 2 (model busy 2)" in line and "p95" in line


# ----------------------------------------------------------------------------- restoration


@pytest.fixture(scope="module")
def photo_and_landmarks():
    image = infer_lib.read_rgb(sample_photos.face_photo_paths()[0])
    with FaceAnalyzer() as analyzer:
        faces = analyzer.detect(image)
    assert faces
    return image, [f.landmarks for f in faces]


def test_stabiliser_averages_noise_but_follows_real_change():
    rng = np.random.default_rng(0)
    r = 32
    M = [np.array([[1.0, 0, -10], [0, 1.0, -10]])]
    crop = np.full((1, r, r, 3), 120, np.uint8)
    mask = np.full((1, r, r), 0.9, np.float32)
    stab = TemporalStabilizer(StabilizerOptions(strength=0.8))
    outs = []
    for t in range(40):
        noisy = np.clip(150 + rng.normal(0, 10, (1, r, r, 3)), 0, 255).astype(np.uint8)
        out, m = stab(M, crop, noisy, mask, t / 25)
        outs.append(out.astype(float))
    temporal_std = np.std(np.stack(outs[10:]), axis=0).mean()
    assert temporal_std < 0.5 * 10  # the model's wobble is mostly averaged out
    # The input changes a lot (e.g. a hand enters): the new output is taken as is.
    changed = np.full((1, r, r, 3), 250, np.uint8)
    new_out = np.full((1, r, r, 3), 30, np.uint8)
    out, _ = stab(M, changed, new_out, mask, 40 / 25)
    np.testing.assert_array_equal(out, new_out)
    # A face far away is a new track: no mixing with the first face's past.
    far = [np.array([[1.0, 0, -500], [0, 1.0, -500]])]
    out, _ = stab(far, crop, new_out, mask, 41 / 25)
    np.testing.assert_array_equal(out, new_out)
    # Strength 0 is per-frame output.
    off = TemporalStabilizer(StabilizerOptions(strength=0.0))
    off(M, crop, new_out, mask, 0.0)
    out, _ = off(M, crop, 255 - new_out, mask, 0.04)
    np.testing.assert_array_equal(out, 255 - new_out)


# ----------------------------------------------------------------------------- tracking and flicker


@pytest.fixture(scope="module")
def still_clip():
    return clips.make_clip(sample_photos.face_photo_paths()[0], frames=16, size=(192, 144),
                           pan_frac=0.0, zoom=0.0)


@pytest.fixture(scope="module")
def slow_clip():
    return clips.make_clip(sample_photos.face_photo_paths()[0], frames=16, size=(192, 144),
                           pan_frac=0.03, zoom=0.03)


def test_clip_truth_is_consistent(slow_clip):
    c = slow_clip
    assert c.occluded.shape == c.clean.shape == (16, 144, 192, 3)
    assert 0.02 < c.region.mean() < 0.3
    # Outside the occluder the occluded frames are the clean ones plus sensor noise.
    diff = np.abs(c.occluded.astype(int) - c.clean.astype(int))[~c.region]
    assert 1.0 < diff.mean() < 3.0
    # The truth moves: pan and zoom shift the landmarks between the first frame and a quarter in.
    assert np.abs(c.landmarks[4] - c.landmarks[0]).mean() > 2.0


def test_flow_tracker_follows_the_face_with_few_keyframes(slow_clip):
    with LandmarkTracker(TrackerOptions(method="flow", detect_every=4, smoothing=False)) as track:
        lms = [track(slow_clip.occluded[t], t / slow_clip.fps) for t in range(len(slow_clip))]
        assert track.keyframes == 4  # frames 0, 4, 8, 12
    assert all(len(f) == 1 for f in lms)
    err = np.mean([np.abs(f[0] - truth).mean() for f, truth in zip(lms, slow_clip.landmarks)])
    assert err < 6.0  # px, on a face about 70 px tall: the landmarker's own bias on a masked face
    tracking = flicker.measure_tracking([slow_clip], {
        "mediapipe": TrackerOptions(method="mediapipe", smoothing=False),
        "flow": TrackerOptions(method="flow", detect_every=4, smoothing=False)})
    assert tracking["flow"]["keyframe_fraction"] == 0.25
    assert tracking["mediapipe"]["keyframe_fraction"] == 1.0
    assert tracking["flow"]["found_fraction"] == tracking["mediapipe"]["found_fraction"] == 1.0


def test_flicker_and_masked_psnr_on_known_arrays():
    clean = np.zeros((3, 4, 4, 3), np.uint8)
    clean[1] = 10
    clean[2] = 20
    region = np.zeros((3, 4, 4), bool)
    region[:, :2] = True
    same_motion = clean + 5
    assert flicker.flicker(same_motion, clean, region) == 0.0
    still = np.zeros_like(clean)
    assert flicker.flicker(still, clean, region) == pytest.approx(10.0)
    assert flicker.masked_psnr(same_motion, clean, region) == pytest.approx(
        10 * np.log10(255 ** 2 / 25))


def test_measure_flicker_shows_the_stabiliser_removing_output_wobble(still_clip):
    variants = {"per_frame": flicker.VARIANTS["per_frame"], "stabilized": flicker.VARIANTS["stabilized"]}
    result = flicker.measure_flicker(NoisyModel(), [still_clip], variants)
    per_frame, stab = result["variants"]["per_frame"], result["variants"]["stabilized"]
    assert per_frame["faces_per_frame"] == stab["faces_per_frame"] == 1.0
    assert result["vs_per_frame"]["stabilized"]["flicker_reduction"] >= 0.3
    # Averaging noise does not cost accuracy (it gains some here).
    assert result["vs_per_frame"]["stabilized"]["psnr_cost_db"] <= 0.3
    assert result["meets_target"]["all"] is True
    assert set(result["variants"]["stabilized"]["by_motion"]) == {still_clip.motion}
    assert stab["static_output_flicker"] == 0.0  # nothing moves in a still clip
