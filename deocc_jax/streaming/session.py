"""One `live` run: open the source, the model and the outputs, run the pipeline, report.

`run(LiveOptions(...))` is what `python -m deocc_jax.live` calls; tests and the
benchmark call it too (with a model object and a tracker factory when they
want fakes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.restoration import infer_lib
from deocc_jax.io import atomic, progress
from deocc_jax.io import video as video_io
from deocc_jax.streaming import sinks as sinks_lib
from deocc_jax.restoration import frames as restore
from deocc_jax.streaming import mjpeg, queues, sources
from deocc_jax.streaming import stats as stats_lib
from deocc_jax.streaming.pipeline import LivePipeline, PipelineOptions, warmup_faces_for
from deocc_jax.restoration.stabilize import StabilizerOptions
from deocc_jax.streaming.tracking import TrackerOptions
from deocc_jax.streaming.virtualcam import VirtualCamera

WINDOW_TITLE = "deocc live: before | after (q: quit, s: stats)"


@dataclasses.dataclass
class LiveOptions:
    """Everything one run needs (the binary's flags).

    Attributes:
      input: a camera index ("0") or a video file.
      model: a model path, or None for the shipped real-time model.
      checkpoint: for a workdir: "latest", "best" or a step.
      realtime: play a file at its own frame rate, dropping frames that would
        be late (a camera always is real time); else every frame is processed.
      output: write the restored video here (H.264; a file source's audio is kept).
      overwrite: replace an existing --output (only once the new one is complete).
      serve: serve MJPEG on this port (0 = any free port); None = off.
      bind: the address the MJPEG server listens on.
      virtual_camera: None = off; "auto" or a pyvirtualcam backend name.
      virtual_camera_device: the device to use (e.g. /dev/video10).
      window: show before | after in a window.
      mask: the occluder mask image for a guided model.
      tracker, stabilizer: see TrackerOptions / StabilizerOptions (None = per-frame).
      max_frames: stop after this many input frames.
      report_every_s: log the running figures this often (0 = only at the end
        and on SIGUSR1 / the "s" key).
      report_path: write the final report (JSON) here.
      quiet: no progress bar.
      camera_timeouts: VideoReader timeout arguments for cameras.
    """
    input: str
    model: str | None = None
    checkpoint: str | int = "latest"
    realtime: bool = False
    output: str | None = None
    overwrite: bool = False
    serve: int | None = None
    bind: str = "127.0.0.1"
    virtual_camera: str | None = None
    virtual_camera_device: str | None = None
    window: bool = False
    mask: str | None = None
    tracker: TrackerOptions = dataclasses.field(default_factory=TrackerOptions)
    stabilizer: StabilizerOptions | None = dataclasses.field(default_factory=StabilizerOptions)
    max_frames: int | None = None
    report_every_s: float = 0.0
    report_path: str | None = None
    quiet: bool = False
    camera_timeouts: dict[str, float] = dataclasses.field(default_factory=dict)


def _check_output(opts: LiveOptions) -> None:
    out = opts.output
    if out is None:
        return
    if os.path.splitext(out)[1].lower() not in video_io.WRITABLE_EXTENSIONS:
        raise errors.InvalidInputError(
            f"--output={out}: a video file ending in one of {', '.join(video_io.WRITABLE_EXTENSIONS)}")
    if not video_io.is_camera(opts.input) and os.path.exists(opts.input) and \
            os.path.realpath(out) == os.path.realpath(opts.input):
        raise errors.OutputExistsError(f"--output={out} is the input file; choose another name")
    if os.path.exists(out) and not opts.overwrite:
        raise errors.OutputExistsError(f"--output={out} exists; pass --overwrite to replace it")


def _check_window() -> None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                  or os.environ.get("WAYLAND_DISPLAY")):
        raise errors.InvalidInputError(
            "--window needs a graphical display (DISPLAY is not set); use --serve=PORT and open "
            "the stream in a browser instead")


def open_model(opts: LiveOptions):
    """The model to run: --model, else the shipped real-time model."""
    return predictors.open_predictor(opts.model, opts.checkpoint, default=predictors.DEFAULT_LIVE_MODEL)


def starting_frame(width: int, height: int) -> np.ndarray:
    """What the stream shows until the first restored frame (the model loads and compiles)."""
    frame = np.full((height, width, 3), 24, np.uint8)
    scale = max(0.4, width / 640)
    text = "deocc: starting..."
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    cv2.putText(frame, text, ((width - tw) // 2, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (200, 200, 200), 2, cv2.LINE_AA)
    return frame


class _Reporter:
    """Running figures on demand (SIGUSR1, the "s" key) and every `every_s` seconds."""

    def __init__(self, stats: stats_lib.LiveStats, every_s: float, log: Callable[[str], None]):
        self.stats, self.every_s, self.log = stats, every_s, log
        self.requested = threading.Event()
        self._last = time.monotonic()
        self._old_handler = None
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGUSR1, lambda *_: self.requested.set())

    def poll(self) -> None:
        now = time.monotonic()
        if self.requested.is_set() or (self.every_s > 0 and now - self._last >= self.every_s):
            self.requested.clear()
            self._last = now
            self.log("live: " + stats_lib.format_line(self.stats.snapshot(recent=True))
                     + " (p50/p95 over the last frames)")

    def close(self) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGUSR1, self._old_handler)


def run(opts: LiveOptions, *, model=None, log: Callable[[str], None] = print,
        tracker_factory: Callable[[], Any] | None = None,
        on_start: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs live de-occlusion until the source ends, --max_frames, "q" or Ctrl-C.

    Args:
      opts: a LiveOptions.
      model: a Predictor to use instead of opening `opts.model`.
      log: where status lines go.
      tracker_factory: passed to LivePipeline (tests).
      on_start: called with {"stream_url", "virtual_camera"...} once outputs are
        open and frames flow (tests use it to connect a client).

    SIGTERM and SIGINT (`errors.StopSignals`, on the main thread) end the run
    as the source's end would, once the call in progress returns (a model
    warm-up is not cut short): the recording is closed as a playable video of
    the frames done so far, the report written, and then `errors.Interrupted`
    raised, saying what was kept.

    Returns:
      The report: the final LiveStats snapshot plus "input", "source_fps",
      "mode", "outputs", "truncation" (or None), "model" and
      "stopped_by_signal" (None, or "SIGTERM" / "SIGINT" in the report file).

    Raises:
      errors.UserError: bad input, an unusable output, a camera that fails.
      errors.Interrupted: SIGTERM or SIGINT stopped the run (after the above).
    """
    if not any((opts.output, opts.serve is not None, opts.virtual_camera, opts.window)):
        raise errors.InvalidInputError(
            "nothing to output: pass --virtual_camera, --serve=PORT, --window and/or --output=FILE")
    _check_output(opts)
    if opts.report_path:  # checked now: the report is written after a whole run
        atomic.plan_outputs([("the report", opts.report_path)]
                            + ([("the recording", opts.output)] if opts.output else []),
                            [] if video_io.is_camera(opts.input) else [opts.input],
                            overwrite=opts.overwrite, flag="--report")
    if opts.window:
        _check_window()
    with errors.StopSignals() as signals:
        report = _run(opts, signals, model=model, log=log, tracker_factory=tracker_factory,
                      on_start=on_start)
    if report["stopped_by_signal"]:
        kept = (f"kept {report['file_frames_written']} frames in {opts.output}"
                if report.get("file_frames_written") else "no frame was recorded")
        raise signals.interrupted(f"{kept}; {report['frames_out']} frames came out in all")
    return report


def _run(opts: LiveOptions, signals: errors.StopSignals, *, model, log: Callable[[str], None],
         tracker_factory, on_start) -> dict[str, Any]:
    stop = threading.Event()
    source = sources.open_source(opts.input, realtime=opts.realtime, stop=stop, **opts.camera_timeouts)
    sinks: list[Any] = []
    reporter = None
    ok = False
    try:
        info = source.info
        stats = stats_lib.LiveStats()
        started: dict[str, Any] = {}
        if opts.serve is not None:
            # Before the model loads and compiles (seconds): a viewer connecting now gets
            # a "starting" frame at once, repeated until the first restored one.
            server = mjpeg.MJPEGServer(opts.serve, opts.bind, stats=stats.snapshot)
            server.publish(starting_frame(info.width, info.height), placeholder=True)
            sinks.append(sinks_lib.MJPEGSink(server))
            started["stream_url"] = server.url
            where = "" if opts.bind in ("127.0.0.1", "localhost", "::1") else \
                f" (listening on {opts.bind}: reachable from other machines)"
            log(f"MJPEG stream: {server.url}{where}")
        model = model if model is not None else open_model(opts)
        guide = restore.GuideMask(opts.mask, (info.height, info.width)) if opts.mask else None
        restore.check_model(model, None if guide is None else guide.path)  # before any file is opened
        if opts.virtual_camera:
            cam = VirtualCamera(info.width, info.height, info.fps, backend=opts.virtual_camera,
                                device=opts.virtual_camera_device)
            sinks.append(sinks_lib.VirtualCameraSink(cam))
            started["virtual_camera"] = f"{cam.device} ({cam.backend})"
            log(f"virtual camera: {cam.device} ({cam.backend} backend)")
        if opts.output:
            audio = None if source.is_camera or not info.audio_streams else opts.input
            sinks.append(sinks_lib.FileSink(opts.output, info, audio_from=audio,
                                            lossless=not source.realtime,
                                            overwrite=opts.overwrite))
        lossless = not source.realtime
        pipe = LivePipeline(source, model, sinks, PipelineOptions(
            lossless=lossless, tracker=opts.tracker, stabilizer=opts.stabilizer,
            max_frames=opts.max_frames, display=opts.window,
            warmup_faces=warmup_faces_for(opts.tracker)),
            guide=guide, stats=stats, tracker_factory=tracker_factory, stop_event=stop)
        mode = "camera" if source.is_camera else ("file in real time" if opts.realtime else "file")
        log(f"live: {opts.input} ({mode}, {info.width}x{info.height} at {info.fps:.2f} fps) with "
            f"{model.description}")
        if not signals.requested:
            pipe.warm_up()
        stopped_by_user = signals.requested
        if not stopped_by_user:  # a signal during the warm-up ends the run before capture
            pipe.start()
            reporter = _Reporter(stats, opts.report_every_s, log)
            if on_start is not None:
                on_start(started)
            total = info.frame_count if not source.is_camera else None
            if opts.max_frames is not None and total is not None:
                total = min(total, opts.max_frames)
            stopped_by_user = _main_loop(pipe, stats, reporter, opts, total, signals,
                                         desc=os.path.basename(opts.input) if not source.is_camera
                                         else f"camera {opts.input}")
        snap = pipe.join()
        ok = True
    except video_io.CameraError:
        ok = True  # what was recorded before the camera failed is a valid video: keep it
        raise
    finally:
        if reporter is not None:
            reporter.close()
        for sink in sinks:
            if not ok and isinstance(sink, sinks_lib.FileSink):
                # A failed run leaves no half-written video under the output name.
                sink.abort()
            else:
                sink.close()
        source.close()
        if opts.window:
            cv2.destroyAllWindows()
    by_signal = signals.name or None
    report = {"input": opts.input, "mode": mode, "source_fps": info.fps, "model": model.description,
              "stopped_by_user": stopped_by_user, "stopped_by_signal": by_signal,
              "truncation": source.truncation, "outputs": {**started, "file": opts.output}, **snap}
    file_sink = next((k for k in sinks if isinstance(k, sinks_lib.FileSink)), None)
    if file_sink is not None:
        report["file_frames_written"] = file_sink.frames_written
        report["file_frames_not_recorded"] = file_sink.dropped
    log(f"live: {stats_lib.format_line(snap)}")
    if file_sink is not None and file_sink.dropped:
        log(f"{opts.output}: {file_sink.dropped} output frames were not recorded (the encoder fell "
            "behind); the stream and virtual camera got them")
    if source.truncation:
        log(source.truncation)
    if opts.output:
        log(f"wrote {opts.output}" if snap["frames_out"] else
            f"no frame came out: {opts.output} was not written")
    if opts.report_path:
        atomic.write_text(opts.report_path, json.dumps(report, indent=2, default=str),
                          overwrite=opts.overwrite)
    return report


def _main_loop(pipe: LivePipeline, stats: stats_lib.LiveStats, reporter: _Reporter,
               opts: LiveOptions, total: int | None, signals: errors.StopSignals,
               desc: str) -> bool:
    """Shows the window, updates the progress bar and reports until the pipeline ends.

    Returns:
      Whether the user stopped the run (q / Esc, SIGINT / SIGTERM).
    """
    bar = progress.bar(total, desc, quiet=opts.quiet or total is None)
    shown = 0
    stopped = False
    try:
        while pipe.running():
            if signals.requested and not stopped:
                stopped = True
                pipe.stop()
            if opts.window:
                try:
                    frame, restored = pipe.display_slot.get(timeout_s=0.05)
                    cv2.imshow(WINDOW_TITLE, cv2.cvtColor(infer_lib.side_by_side(frame.rgb, restored),
                                                          cv2.COLOR_RGB2BGR))
                except (TimeoutError, queues.Closed, queues.Stopped):
                    pass
                key = cv2.waitKey(1) & 0xFF
                if key in (ord("q"), 27):
                    stopped = True
                    pipe.stop()
                elif key == ord("s"):
                    reporter.requested.set()
            else:
                time.sleep(0.05)
            n = stats.frames_in
            if n > shown:
                bar.update(n - shown)
                shown = n
                snap_out, dropped = stats.frames_out, sum(stats.dropped.values())
                bar.set_postfix_str(f"out {snap_out}, dropped {dropped}", refresh=False)
            reporter.poll()
    finally:
        bar.close()
    return stopped


def benchmark(model, clip_path: str, *, tracker: TrackerOptions | None = None,
              stabilizer: StabilizerOptions | None = StabilizerOptions(),
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The live path as a user gets it: a file played in real time, read by an MJPEG client.

    What `benchmarks/inference.py` reports per model: pipeline fps, latency
    p50/p95, drops, stage times, and the frame rate a plain HTTP client
    receives ("client").

    Args:
      model: a Predictor.
      clip_path: a video file (e.g. `clips.write_clip` of a 640x480 clip).
      tracker, stabilizer: as in LiveOptions (default: live's defaults).
      log: where status lines go.

    Returns:
      `run`'s report plus "client": {"frames", "seconds", "fps", "content_type"}.
    """
    client: dict[str, Any] = {}
    readers = []

    def on_start(outputs):
        def read():
            client.update(mjpeg.read_stream(outputs["stream_url"], max_seconds=24 * 3600))
        readers.append(threading.Thread(target=read, name="mjpeg-client", daemon=True))
        readers[-1].start()

    report = run(LiveOptions(input=clip_path, realtime=True, serve=0, quiet=True,
                             tracker=tracker or TrackerOptions(), stabilizer=stabilizer),
                 model=model, log=log, on_start=on_start)
    for t in readers:
        t.join(30)
    client.pop("jpegs", None)
    report["client"] = client
    return report
