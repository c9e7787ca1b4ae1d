"""The restored stream as a virtual camera that Meet, Zoom, Teams or OBS can pick (pyvirtualcam).

Backends: v4l2loopback on Linux, OBS Virtual Camera on Windows and macOS
(also Unity Capture on Windows). When none is usable the error says, in one
line, what to install.

Manual check (README): `sudo modprobe v4l2loopback devices=1 exclusive_caps=1
card_label=deocc`, run `python -m deocc_jax.live --input=0 --virtual_camera`,
then pick "deocc" as the camera in a browser's camera test page.
"""

from __future__ import annotations

import platform

import numpy as np

from deocc_jax import errors

# What to install per OS when no backend works.
INSTALL_HINT = {
    "Linux": ("install v4l2loopback and load it: sudo apt install v4l2loopback-dkms && "
              "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=deocc"),
    "Windows": "install OBS Studio (28 or newer) and start its Virtual Camera once",
    "Darwin": "install OBS Studio (28 or newer) and start its Virtual Camera once",
}


class VirtualCameraError(errors.UserError, RuntimeError):
    """No virtual camera backend could be opened."""


def _pyvirtualcam():
    import pyvirtualcam  # loads a native backend for this OS
    return pyvirtualcam


def available_backends() -> list[str]:
    """Names of the backends pyvirtualcam knows on this OS (usable or not)."""
    return sorted(_pyvirtualcam().camera.BACKENDS)


class VirtualCamera:
    """Sends RGB frames to a virtual camera; a context manager.

    Args:
      width, height: frame size (the stream's).
      fps: the rate apps are told to expect.
      backend: a pyvirtualcam backend name, or None / "auto" for the first
        that works.
      device: a device to use (e.g. /dev/video10 on Linux), else any free one.

    Raises:
      errors.InvalidInputError: an unknown backend name.
      VirtualCameraError: no backend could be opened (says what to install).
    """

    def __init__(self, width: int, height: int, fps: float, backend: str | None = None,
                 device: str | None = None):
        pvc = _pyvirtualcam()
        known = available_backends()
        backend = None if backend in (None, "", "auto") else backend
        if backend is not None and backend not in known:
            raise errors.InvalidInputError(
                f"--virtual_camera={backend}: unknown backend; on {platform.system()} pyvirtualcam "
                f"has: {', '.join(known) or 'none'}")
        if not known:
            raise VirtualCameraError(
                f"no virtual camera backend exists for {platform.system()}: "
                f"{INSTALL_HINT.get(platform.system(), 'use --serve (MJPEG) instead')}")
        try:
            self._cam = pvc.Camera(width=width, height=height, fps=fps, fmt=pvc.PixelFormat.RGB,
                                   backend=backend, device=device)
        except Exception as e:  # pyvirtualcam raises RuntimeError/ValueError per backend
            reason = " | ".join(str(e).splitlines())
            raise VirtualCameraError(
                f"no virtual camera available ({reason}): "
                f"{INSTALL_HINT.get(platform.system(), 'use --serve (MJPEG) instead')}") from e
        self.backend = self._cam.backend
        self.device = self._cam.device
        self.frames_sent = 0

    def send(self, rgb: np.ndarray) -> None:
        """Sends one uint8 [H, W, 3] frame (returns at once; the app reads the newest)."""
        self._cam.send(np.ascontiguousarray(rgb))
        self.frames_sent += 1

    def close(self) -> None:
        self._cam.close()

    def __enter__(self) -> "VirtualCamera":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
