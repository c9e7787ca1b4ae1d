"""Moved to `deocc_jax.io.video`. This alias stays only until `infer_lib` imports from there.

The lead is restructuring `infer_lib` concurrently, so its import line is left to
the lead (issue 11 report); delete this file once nothing imports `deocc_jax.video`.
"""

from deocc_jax.io.video import (DEFAULT_CAMERA_FPS, VIDEO_EXTENSIONS, CameraError,  # noqa: F401
                                Frame, LandmarkSmoother, OneEuroFilter, StageTimer, VideoInfo,
                                VideoReader, VideoWriter, is_camera, is_video_path, probe)
