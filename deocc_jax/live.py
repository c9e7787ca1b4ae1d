r"""Live face de-occlusion for video calls and streams: a camera (or a file) in, restored video out.

    python -m deocc_jax.live --input=0 --virtual_camera            # pick "deocc" in Meet/Zoom
    python -m deocc_jax.live --input=0 --serve=8080                 # OBS / browser / ffplay:
        #   http://127.0.0.1:8080/stream.mjpg
    python -m deocc_jax.live --input=0 --window --output=call.mp4
    python -m deocc_jax.live --input=clip.mp4 --realtime --serve=8080   # a file as a camera
    python -m deocc_jax.live --input=clip.mp4 --output=clip_out.mp4     # every frame, audio kept
    python -m deocc_jax.live --model=runs/guided --mask=sunglasses.png --input=0 --window

Capture, face tracking, the model and blending run on their own threads with a
one-frame hand-off between them; in real time (a camera, or a file with
--realtime) a frame that would be late is dropped, never queued, so latency
stays bounded whatever the model's speed. Frames in / out / dropped and the
capture-to-output latency (p50 / p95) are printed at the end, every
--report_every seconds, and on SIGUSR1 (`kill -USR1 <pid>`) or the "s" key.
Restored faces are stabilised over time (--stabilize); a file output is
H.264 with the source's timestamps and audio.

SIGTERM (`kill`, systemd, Docker) and SIGINT (Ctrl-C) end a run the same way:
the recording is closed as a playable video of the frames done so far and the
report written; the exit status is 143 or 130. --serve shows a "starting"
picture from the moment the server listens until the first restored frame.
Compiled XLA programs are kept in --jax_cache_dir, so a restart skips the
model's compilation.

Why a binary of its own rather than more `infer` flags: `infer` is a batch
tool whose contract is one output per input (every frame of a video, every
photo of a folder, a report at the end); `live` is a service whose contract is
bounded latency: it drops frames, runs until stopped, and feeds outputs that
have no place in `infer` (a virtual camera, an HTTP stream, running figures).
Mixing the two would make half of each one's flags meaningless for the other.
Both share the library code (face tracking, restoration and blending in
`deocc_jax.streaming` and `infer_lib`, video I/O in `deocc_jax.io.video`).
"""

import os

from absl import app, flags, logging

from deocc_jax import errors
from deocc_jax.artifacts import loading
from deocc_jax.restoration import smoothing, stabilize
from deocc_jax.streaming import session, tracking

DEFAULT_JAX_CACHE = "~/.cache/deocc/jax"

_INPUT = flags.DEFINE_string("input", "0", "Camera index (0, 1, ...) or a video file.")
_MODEL = flags.DEFINE_string("model", None, "Model: a pretrained folder, a workdir, an export, "
                             ".onnx or .tflite (default: the shipped real-time model).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "For a workdir: latest, best or a step.")
_REALTIME = flags.DEFINE_bool("realtime", False, "Play a video file as if it were a camera: at its "
                              "own frame rate, dropping frames that would be late.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the restored video here (H.264; audio of "
                              "a file input is kept).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
_SERVE = flags.DEFINE_integer("serve", None, "Serve the restored video as MJPEG over HTTP on this "
                              "port (0 = any free port).")
_BIND = flags.DEFINE_string("bind", "127.0.0.1", "Address the --serve server listens on; anything "
                            "but loopback exposes the stream to the network.")
_VCAM = flags.DEFINE_string("virtual_camera", None, "Send the restored video to a virtual camera; "
                            "a bare --virtual_camera picks the backend (or name one: v4l2loopback, "
                            "obs, unitycapture).")
_VCAM_DEVICE = flags.DEFINE_string("virtual_camera_device", None, "Virtual camera device, e.g. "
                                   "/dev/video10 (default: the first free one).")
_WINDOW = flags.DEFINE_bool("window", False, "Show before | after in a window (q quits, s prints "
                            "the running figures).")
_MASK = flags.DEFINE_string("mask", None, "Guided models: the occluder mask, an image the frame's "
                            "size (fixed in the picture) or square (on the aligned face template).")
_TRACKING = flags.DEFINE_enum("tracking", tracking.TrackerOptions.method, tracking.METHODS, "How faces are followed "
                              "between frames: MediaPipe's own tracking, or optical flow between "
                              "landmarker keyframes.")
_DETECT_EVERY = flags.DEFINE_integer("detect_every", tracking.TrackerOptions.detect_every,
                                     "--tracking=flow: run the landmarker every n frames.")
_SMOOTHING = flags.DEFINE_bool("smoothing", True, "One-euro smoothing of the landmarks.")
_MIN_CUTOFF = flags.DEFINE_float("min_cutoff", smoothing.DEFAULT_MIN_CUTOFF, "One-euro cutoff at rest (Hz); lower = steadier.")
_BETA = flags.DEFINE_float("beta", smoothing.DEFAULT_BETA, "One-euro speed coefficient; higher = less lag.")
_STABILIZE = flags.DEFINE_bool("stabilize", True, "Temporal stabilisation of the restored face and "
                               "its mask.")
_STRENGTH = flags.DEFINE_float("stabilize_strength", stabilize.StabilizerOptions.strength,
                               "Weight of the past where the face does not change, in [0, 1).")
_MOTION = flags.DEFINE_float("motion_scale", stabilize.StabilizerOptions.motion_scale,
                             "Input change (grey levels) above which the new frame is taken as is.")
_MAX_FACES = flags.DEFINE_integer("max_faces", 4, "Most faces handled per frame.")
_MIN_CONF = flags.DEFINE_float("min_confidence", 0.3, "MediaPipe detection confidence threshold.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Stop after this many input frames.")
_REPORT_EVERY = flags.DEFINE_float("report_every", 0.0, "Print the running figures every n seconds "
                                   "(0: only at the end, on SIGUSR1 and on the s key).")
_REPORT = flags.DEFINE_string("report", None, "Write the final report (JSON) here.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache_dir", None, "Where compiled XLA programs are kept between runs, so a restart "
    "skips compiling the model (default: $JAX_COMPILATION_CACHE_DIR, else "
    f"{DEFAULT_JAX_CACHE}; an empty value turns it off).")
_CAMERA_TIMEOUT = flags.DEFINE_float("camera_timeout", 2.0, "Seconds without a frame after which a "
                                     "camera counts as stopped (the first frame may take 5 s).")


def _options() -> session.LiveOptions:
    if _DETECT_EVERY.value < 1:
        raise errors.InvalidInputError(f"--detect_every={_DETECT_EVERY.value}: must be at least 1")
    if not 0.0 <= _STRENGTH.value < 1.0:
        raise errors.InvalidInputError(f"--stabilize_strength={_STRENGTH.value}: must be in [0, 1)")
    if _SERVE.value is not None and not 0 <= _SERVE.value <= 65535:
        raise errors.InvalidInputError(f"--serve={_SERVE.value}: not a TCP port")
    return session.LiveOptions(
        input=_INPUT.value, model=_MODEL.value,
        checkpoint=loading.parse_checkpoint(_CHECKPOINT.value), realtime=_REALTIME.value,
        output=_OUTPUT.value, overwrite=_OVERWRITE.value, serve=_SERVE.value, bind=_BIND.value,
        virtual_camera=_VCAM.value, virtual_camera_device=_VCAM_DEVICE.value, window=_WINDOW.value,
        mask=_MASK.value,
        tracker=tracking.TrackerOptions(
            method=_TRACKING.value, detect_every=_DETECT_EVERY.value, max_faces=_MAX_FACES.value,
            min_confidence=_MIN_CONF.value, landmarker_model=_LANDMARKER.value,
            smoothing=_SMOOTHING.value, min_cutoff=_MIN_CUTOFF.value, beta=_BETA.value),
        stabilizer=(stabilize.StabilizerOptions(strength=_STRENGTH.value, motion_scale=_MOTION.value)
                    if _STABILIZE.value else None),
        max_frames=_MAX_FRAMES.value, report_every_s=_REPORT_EVERY.value, report_path=_REPORT.value,
        quiet=_QUIET.value, camera_timeouts={"camera_frame_timeout_s": _CAMERA_TIMEOUT.value})


def jax_cache_dir(flag_value: str | None) -> str | None:
    """The persistent compilation cache folder: the flag, $JAX_COMPILATION_CACHE_DIR, the default.

    None (an empty flag) means no cache.
    """
    if flag_value is None:
        flag_value = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_JAX_CACHE
    return os.path.expanduser(flag_value) if flag_value else None


def _enable_compilation_cache(folder: str | None) -> None:
    import jax  # after flag parsing; the cache must be set before the first compilation
    jax.config.update("jax_compilation_cache_dir", folder)
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # a read-only home: run without, and say so
        logging.warning("--jax_cache_dir=%s cannot be created (%s): compiling without a cache",
                        folder, e.strerror or e)
        jax.config.update("jax_compilation_cache_dir", None)


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    options = _options()
    _enable_compilation_cache(jax_cache_dir(_JAX_CACHE.value))
    session.run(options)  # SIGTERM / SIGINT: errors.Interrupted, exit 128 + the signal


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bare `--virtual_camera` meaning `--virtual_camera=auto`."""
    argv = ["--virtual_camera=auto" if a == "--virtual_camera" else a for a in argv]
    return app.parse_flags_with_usage(argv)


def run():
    """Console-script entry point (`deocc-live`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
