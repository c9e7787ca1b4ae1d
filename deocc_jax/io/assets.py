"""Finds (and if needed downloads) the MediaPipe model files deocc uses.

Model files are third-party assets: they never live in the repository. A model
is resolved in this order, first hit wins:

1. an explicit path (a flag such as `--landmarker_model`);
2. `$DEOCC_ASSETS_DIR/<name>`;
3. the user cache: `$XDG_CACHE_HOME/deocc/models/<name>` (default
   `~/.cache/deocc/models/<name>`);
4. a download from Google's official URL into that cache, verified by sha256.

When every step fails (e.g. offline) one error lists where to put the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request

from deocc_jax import errors

ENV_ASSETS_DIR = "DEOCC_ASSETS_DIR"


@dataclasses.dataclass(frozen=True)
class ModelAsset:
    name: str
    url: str
    sha256: str
    num_bytes: int


# Official MediaPipe releases (float16, version 1); see ../shared/models/README.md.
MODELS: dict[str, ModelAsset] = {
    m.name: m for m in (
        ModelAsset(
            "face_landmarker.task",
            "https://storage.googleapis.com/mediapipe-models/face_landmarker/"
            "face_landmarker/float16/1/face_landmarker.task",
            "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            3_758_596),
        ModelAsset(
            "blaze_face_short_range.tflite",
            "https://storage.googleapis.com/mediapipe-models/face_detector/"
            "blaze_face_short_range/float16/1/blaze_face_short_range.tflite",
            "b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
            229_746),
        # Not a Tasks release: the legacy Solutions model, from MediaPipe's repository at a fixed commit.
        ModelAsset(
            "face_detection_full_range.tflite",
            "https://raw.githubusercontent.com/google-ai-edge/mediapipe/"
            "63e679d99ca45b30514a9d84c9351a2d77bb9ba0/mediapipe/modules/face_detection/"
            "face_detection_full_range.tflite",
            "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
            1_083_984),
    )
}


class AssetError(errors.UserError, FileNotFoundError):
    """A model file could not be found nor downloaded (one line saying where to put it)."""


def cache_dir() -> str:
    """The user cache folder for model files (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deocc", "models")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(asset: ModelAsset, url: str, dest: str, timeout_s: float) -> None:
    """Downloads to a temp file next to `dest`, checks sha256, then renames."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=asset.name + ".", suffix=".part", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        digest = sha256_file(tmp)
        if digest != asset.sha256:
            raise AssetError(
                f"downloaded {url} but its sha256 is {digest}, expected {asset.sha256}; "
                "the file was discarded")
        # writer-policy: exempt (a cache: the file's SHA-256 was checked, so what it replaces,
        # if anything, is a concurrent download of the same bytes)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_model(name: str, flag_path: str | None = None, *, download: bool = True,
                  url: str | None = None, timeout_s: float = 60.0) -> str:
    """Path of a MediaPipe model file, downloading it into the cache if needed.

    Args:
      name: a key of `MODELS`.
      flag_path: an explicit path (from a flag). If given it must exist: a typo
        is an error, never silently replaced by another copy.
      download: whether step 4 (download) may run.
      url: overrides the official URL (tests, mirrors); sha256 is still checked.
      timeout_s: network timeout of the download.

    Returns:
      A path to an existing file.

    Raises:
      AssetError: nothing found and the download failed or was disabled; the
        message says where to put the file.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    asset = MODELS[name]
    if flag_path:
        if not os.path.isfile(flag_path):
            raise AssetError(f"model file {flag_path!r} (given explicitly for {name}) does not exist")
        return flag_path
    env_dir = os.environ.get(ENV_ASSETS_DIR)
    if env_dir and os.path.isfile(os.path.join(env_dir, name)):
        return os.path.join(env_dir, name)
    cached = os.path.join(cache_dir(), name)
    if os.path.isfile(cached):
        return cached
    url = url or asset.url
    reason = "downloads are disabled"
    if download:
        try:
            logging.info("downloading %s from %s into %s", name, url, cached)
            _download(asset, url, cached, timeout_s)
            return cached
        except AssetError as e:
            reason = str(e)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = f"download from {url} failed: {e}"
    raise AssetError(
        f"MediaPipe model {name!r} not found. Looked in: "
        f"${ENV_ASSETS_DIR} ({env_dir or 'not set'}), the cache {cached}; {reason}. "
        f"Fix: download {asset.url} (sha256 {asset.sha256}) and put it in {cache_dir()}, "
        f"or in a folder named by ${ENV_ASSETS_DIR}, or pass its path explicitly.")
