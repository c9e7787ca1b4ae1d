"""A tiny de-occlusion dataset built from real faces, for tests.

Real photos from ../shared/data/faces are centre-cropped and resized; a
random coloured ellipse over the lower half (soft edge) is the occluder.
`clean == occluded` wherever `mask == 0`, as in data_prep's records. The
shards are written with the shared record code (features + writer), so the
training input reads them exactly as it would read data_prep's output.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.data import features, writer

REPO = pathlib.Path(__file__).resolve().parents[1]

def _face(path: pathlib.Path, resolution: int) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read face image {path}")
    h, w = bgr.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = cv2.resize(bgr[y:y + s, x:x + s], (resolution, resolution), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def make_pair(clean: np.ndarray, rng: np.random.Generator, source_id: str, variant: int) -> features.Pair:
    """Composites a random ellipse occluder onto the lower half of `clean`."""
    r = clean.shape[0]
    alpha = np.zeros((r * 4, r * 4), np.uint8)  # drawn at 4x and downsampled: soft edges
    center = (int(rng.uniform(0.35, 0.65) * r * 4), int(rng.uniform(0.62, 0.8) * r * 4))
    axes = (int(rng.uniform(0.2, 0.35) * r * 4), int(rng.uniform(0.1, 0.2) * r * 4))
    cv2.ellipse(alpha, center, axes, float(rng.uniform(-20, 20)), 0, 360, 255, -1, cv2.LINE_AA)
    alpha = cv2.resize(alpha, (r, r), interpolation=cv2.INTER_AREA)[..., None]
    color = rng.integers(0, 256, size=3).astype(np.float32)
    a = alpha.astype(np.float32) / 255.0
    occluded = np.round(clean * (1 - a) + color * a).astype(np.uint8)
    mask = np.where(alpha > 0, 255, 0).astype(np.uint8)
    occluded = np.where(mask > 0, occluded, clean)
    return features.Pair(clean=clean, occluded=occluded, mask=mask, alpha=alpha,
                         category="synthetic_ellipse", source_id=source_id, variant=variant,
                         landmarks=np.zeros((features.NUM_LANDMARKS, 2), np.float32))


def write_tiny_dataset(out_dir: str | os.PathLike, faces_dir: str | os.PathLike, *,
                       resolution: int = 32, splits: dict[str, int] | None = None,
                       num_shards: int = 2, seed: int = 0) -> pathlib.Path:
    """Writes ArrayRecord/TFRecord shards and dataset_info.json; returns out_dir.

    Each split uses different photos (sorted by file name) so validation
    faces are unseen in training.
    """
    splits = splits or {"train": 16, "validation": 8}
    out_dir = pathlib.Path(out_dir)
    faces = sorted(pathlib.Path(faces_dir).glob("*.jpg"), key=lambda p: p.name)
    rng = np.random.default_rng(seed)
    offset = 0
    info = {"resolution": resolution, "format_version": features.FORMAT_VERSION,
            "features": features.feature_spec_json(), "splits": {}}
    for split, n in splits.items():
        if offset + n > len(faces):
            raise ValueError(f"only {len(faces)} faces in {faces_dir}")
        records = []
        for i, path in enumerate(faces[offset:offset + n]):
            pair = make_pair(_face(path, resolution), rng, path.stem, 0)
            records.append(features.encode_example(pair))
        offset += n
        per = -(-n // num_shards)
        for s in range(num_shards):
            writer.write_shard(str(out_dir), split, s, num_shards, records[s * per:(s + 1) * per])
        info["splits"][split] = {"num_records": n}  # as data_prep writes it
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return out_dir


_CACHE: dict[tuple, pathlib.Path] = {}


def tiny_dataset(tmp_path_factory, faces_dir, resolution: int = 32, **kwargs) -> pathlib.Path:
    """The tiny dataset, written once per test session (shared across test modules)."""
    key = (resolution, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = write_tiny_dataset(tmp_path_factory.mktemp(f"pairs{resolution}"), faces_dir,
                                         resolution=resolution, **kwargs)
    return _CACHE[key]


def tiny_config(data_dir, **overrides):
    """configs/tiny.py with data_dir set and dotted overrides, e.g. {"loss.l1_weight": 2.0}."""
    import sys
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from configs import tiny
    c = tiny.get_config()
    c.data_dir = str(data_dir)
    c.async_checkpointing = True
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def train_command(workdir, data_dir, config: str = "configs/tiny.py", **overrides) -> list[str]:
    """argv of `python -m deocc_jax.train` with --config.KEY=VALUE overrides."""
    import sys
    cmd = [sys.executable, "-m", "deocc_jax.train", f"--config={config}",
           f"--config.data_dir={data_dir}", f"--workdir={workdir}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    return cmd


def subprocess_env(num_devices: int = 8, **extra) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def random_tiny(resolution: int = 64, *, guided: bool = False, base_width: int | None = None,
                seed: int = 0):
    """(config, variables) of configs/tiny.py at `resolution` with random weights.

    The weights are drawn with numpy from the shapes flax would make (kernels
    ~ N(0, 1/fan_in), scales 1, the rest 0): compiling flax's own init takes
    longer than everything the tests then do with the model.
    """
    import sys
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import jax
    from configs import tiny
    from deocc_jax import models
    config = tiny.get_config()
    config.resolution = resolution
    if guided:
        config.model.mode = "guided"
    if base_width is not None:
        config.model.generator.base_width = base_width
    shapes = jax.eval_shape(lambda k: models.init_generator(config, k), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            return rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(s.dtype)
        return (np.ones if name == "scale" else np.zeros)(s.shape, s.dtype)

    return config, jax.tree_util.tree_map_with_path(draw, shapes)


def load_train_state(setup, workdir, checkpoint="latest"):
    """The full train state of a checkpoint, laid out for `setup`'s mesh (any saving device count)."""
    from deocc_jax.training import checkpointing, train_lib
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    try:
        step = ckpt.resolve(checkpoint)
        return train_lib.state_from_items(setup, step, ckpt.restore(step, train_lib.abstract_items(setup)))
    finally:
        ckpt.close()


# ----------------------------------------------------------------------------- fault injection

# Steps of the shared run on a dataset with an empty validation split (the
# `empty_val_run` fixture in conftest.py); checkpoints at 2 and 4.
EMPTY_VAL_STEPS = 4


def empty_val_config(data_dir, **kw):
    """configs/tiny.py for EMPTY_VAL_STEPS steps, checkpointing and validating every 2."""
    base = {"num_train_steps": EMPTY_VAL_STEPS, "checkpoint_every_steps": 2, "eval_every_steps": 2,
            "log_every_steps": 2, "keep_checkpoints": 20}
    base.update(kw)
    return tiny_config(data_dir, **base)


def copy_workdir(workdir, tmp_path, name="w") -> pathlib.Path:
    """A copy of a shared workdir that a test may damage."""
    dst = tmp_path / name
    shutil.copytree(workdir, dst)
    return dst


def listing(folder) -> list[str]:
    """Every path under `folder`, relative and sorted."""
    folder = pathlib.Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_binary(module, *args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m module args...` on one CPU device, output captured."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=subprocess_env(num_devices=1), capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc, *fragments) -> str:
    """Exit 2, one `error:` line holding every fragment, and no traceback; returns the line."""
    tail = proc.stderr[-3000:]
    assert proc.returncode == errors.EXIT_USER_ERROR, (proc.returncode, tail)
    assert "Traceback" not in proc.stderr, tail
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, tail
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def default_sigint() -> None:
    """`preexec_fn` of a subprocess a test sends SIGINT: the child gets SIGINT's default
    disposition even where this test runner was started with it ignored (a background job of a
    non-interactive shell), which the child would inherit and, like `nohup`, keep."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Painter:
    """A blind stand-in model: paints each crop's lower half and predicts it as occluded."""

    resolution, guided, description = 32, False, "a test painter"

    def __init__(self, fail_on_call=None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, images, masks=None):
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("the model crashed")
        n, r = images.shape[:2]
        mask = np.zeros((n, r, r, 1), np.float32)
        mask[:, r // 2:] = 1.0
        out = images.copy()
        out[:, r // 2:] = (255, 0, 255)
        return {"deoccluded": out, "mask": mask}


def face_rgb(size: int = 256) -> np.ndarray:
    from deocc_jax.faces import sample_photos  # the embedded public-domain portraits
    bgr = cv2.imread(sample_photos.face_photo_paths()[0], cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def face_video(path, frames: int = 12, faststart: bool = False):
    """An H.264 clip of a real face photo, panning slightly."""
    import av  # PyAV only where a clip is made
    face = face_rgb(128)
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for i in range(frames):
            frame = np.roll(face, i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
