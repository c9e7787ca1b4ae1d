"""The live pipeline: capture, detection, the model and output on four threads.

    capture --[slot]--> detect/track --[slot]--> align + model --[slot]--> blend + outputs
                                                                            --[slot]--> window (main thread)

Each hand-off is a one-frame `queues.Slot`. While the model works on frame t,
frame t+1 is being detected and frame t+2 captured. In real-time mode (a
camera, or a file played with `--realtime`) a frame that reaches a busy stage
replaces the one waiting there, and the replaced frame is counted as dropped:
a stage never has more than one frame waiting, so capture-to-output latency
stays bounded by the stage times whatever the model's speed, and the output
rate settles at the slowest stage's rate. In lossless mode (a file processed
to the end) the slots block instead and every frame comes out, in order.

MediaPipe and XLA release the GIL while they compute, so the stages do run in
parallel on a multi-core CPU.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Protocol

import numpy as np

from deocc_jax.io import video as video_io
from deocc_jax.restoration import frames as restore
from deocc_jax.streaming import queues
from deocc_jax.restoration.stabilize import StabilizerOptions, TemporalStabilizer
from deocc_jax.streaming.stats import LiveStats
from deocc_jax.streaming.tracking import LandmarkTracker, TrackerOptions


class Sink(Protocol):
    """An output: gets every output frame, on the output thread."""

    def send(self, frame: video_io.Frame, restored: np.ndarray) -> None:
        ...


@dataclasses.dataclass
class PipelineOptions:
    """Attributes:
      lossless: process every frame (files); else drop frames that would be late.
      tracker: how faces are found and followed.
      stabilizer: temporal stabilisation, or None for per-frame output.
      max_frames: stop after this many input frames.
      display: also hand (before, after) frames to the main thread (`display_slot`).
      warmup_faces: face counts the model is called with before capture starts,
        so that compilation is not mistaken for latency.
    """
    lossless: bool = False
    tracker: TrackerOptions = dataclasses.field(default_factory=TrackerOptions)
    stabilizer: StabilizerOptions | None = dataclasses.field(default_factory=StabilizerOptions)
    max_frames: int | None = None
    display: bool = False
    warmup_faces: tuple[int, ...] = (1,)


def warmup_faces_for(tracker: TrackerOptions) -> tuple[int, ...]:
    """`PipelineOptions.warmup_faces` for a tracker: one face, and two where it follows several."""
    return (1, 2) if tracker.max_faces > 1 else (1,)


@dataclasses.dataclass
class _Detected:
    frame: video_io.Frame
    landmarks: list[np.ndarray]


@dataclasses.dataclass
class _Restored:
    frame: video_io.Frame
    faces: restore.FaceCrops
    out: restore.ModelOutput


class LivePipeline:
    """Runs a source through the model into sinks on background threads.

    Args:
      source: a `sources.FileSource` / `CameraSource` (anything with `frames()`,
        `info` and `skipped_after_last`).
      model: a Predictor (`.resolution`, `.guided`, `__call__(images, masks)`).
      sinks: outputs, called in order on the output thread.
      options: a PipelineOptions.
      guide: the occluder mask for a guided model.
      stats: counters to fill (a new LiveStats by default).
      tracker_factory: builds the landmark tracker on the detect thread
        (tests pass fakes); default `LandmarkTracker(options.tracker)`.
      stop_event: the event that stops the run (share it with the source so a
        paced wait ends at once); a new one by default.
    """

    def __init__(self, source, model, sinks: list[Sink], options: PipelineOptions | None = None, *,
                 guide: restore.GuideMask | None = None, stats: LiveStats | None = None,
                 tracker_factory: Callable[[], Any] | None = None,
                 stop_event: threading.Event | None = None):
        self.source = source
        self.model = model
        self.sinks = list(sinks)
        self.options = options = options or PipelineOptions()
        self.guide = guide
        restore.check_model(model, None if guide is None else guide.path)
        self.stats = stats or LiveStats()
        self.stop_event = stop_event or threading.Event()
        self._tracker_factory = tracker_factory or (lambda: LandmarkTracker(options.tracker))
        self._stabilizer = TemporalStabilizer(options.stabilizer) if options.stabilizer else None
        mk = lambda name: queues.Slot(name, lossless=options.lossless, stop=self.stop_event,  # noqa: E731
                                      on_drop=lambda _, n=name: self.stats.drop(n))
        self._to_detect = mk("detect busy")
        self._to_model = mk("model busy")
        self._to_output = mk("output busy")
        # The window shows the newest frame; it never holds the pipeline back.
        self.display_slot = queues.Slot("display", stop=self.stop_event)
        self._errors: list[BaseException] = []
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._warm = False

    # ------------------------------------------------------------------ control

    def warm_up(self) -> None:
        """Calls the model once per face count of `warmup_faces` (compiles it); idempotent."""
        if self._warm:
            return
        r = self.model.resolution
        for n in self.options.warmup_faces:
            crops = np.zeros((n, r, r, 3), np.uint8)
            if self.model.guided:
                self.model(crops, np.zeros((n, r, r, 1), np.uint8))
            else:
                self.model(crops)
        self._warm = True

    def start(self) -> None:
        """Warms the model up (unless `warm_up` did), starts the stage threads, then capture."""
        self.warm_up()
        for name, target in (("detect", self._detect_loop), ("model", self._model_loop),
                             ("output", self._output_loop)):
            self._spawn(name, target)
        # Capture starts once the landmarker is loaded, so no frame waits on it.
        while not self._ready.wait(0.1):
            if self.stop_event.is_set():
                break
        self.stats.started = time.perf_counter()
        self._spawn("capture", self._capture_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded():
            try:
                target()
            except queues.Stopped:
                pass
            except BaseException as e:  # noqa: BLE001 (re-raised on the main thread by join)
                self._errors.append(e)
                self.stop_event.set()
        t = threading.Thread(target=guarded, name=f"live-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def running(self) -> bool:
        """Whether any stage thread is still working."""
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Asks every thread to finish (frames in flight are counted as dropped)."""
        self.stop_event.set()

    def join(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Waits for the threads; re-raises the first error a stage hit.

        Returns:
          The final `LiveStats.snapshot()`.
        """
        for t in self._threads:
            t.join(timeout_s)
        for slot in (self._to_detect, self._to_model, self._to_output):
            # Frames still waiting when a stop cut the run short.
            if slot.discard():
                self.stats.drop("stopped")
        if self._errors:
            raise self._errors[0]
        return self.stats.snapshot()

    # ------------------------------------------------------------------ stages

    def _capture_loop(self) -> None:
        n = 0
        try:
            for frame in self.source.frames():
                if self.stop_event.is_set():
                    break
                self.stats.frame_in(1 + frame.skipped_before)
                if frame.skipped_before:
                    self.stats.drop("source late" if not self.source.is_camera else "camera newer",
                                    frame.skipped_before)
                try:
                    self._to_detect.put(frame)
                except queues.Stopped:
                    self.stats.drop("stopped")
                    raise
                n += 1
                if self.options.max_frames is not None and n >= self.options.max_frames:
                    break
            else:
                if self.source.skipped_after_last:
                    self.stats.frame_in(self.source.skipped_after_last)
                    self.stats.drop("source late", self.source.skipped_after_last)
        finally:
            self._to_detect.close()

    def _detect_loop(self) -> None:
        try:
            tracker = self._tracker_factory()
        finally:
            self._ready.set()
        try:
            while True:
                try:
                    frame = self._to_detect.get()
                except queues.Closed:
                    return
                with self.stats.stage("detect"):
                    landmarks = tracker(frame.rgb, frame.time_s)
                self._put(self._to_model, _Detected(frame, landmarks))
        finally:
            self._to_model.close()
            tracker.close()

    def _model_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._to_model.get()
                except queues.Closed:
                    return
                with self.stats.stage("align"):
                    faces = restore.align_faces(item.frame.rgb, item.landmarks, self.model.resolution,
                                                self.guide)
                if len(faces):
                    with self.stats.stage("model"):
                        out = restore.run_model(self.model, faces)
                else:
                    out = restore.run_model(self.model, faces)
                self._put(self._to_output, _Restored(item.frame, faces, out))
        finally:
            self._to_output.close()

    def _output_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._to_output.get()
                except queues.Closed:
                    return
                frame = item.frame
                with self.stats.stage("blend"):
                    restored, _ = restore.blend_faces(frame.rgb, item.faces, item.out,
                                                      self._stabilizer, frame.time_s)
                with self.stats.stage("outputs"):
                    for sink in self.sinks:
                        sink.send(frame, restored)
                self.stats.frame_out(frame.captured_at, len(item.faces))
                if self.options.display:
                    self.display_slot.put((frame, restored))
        finally:
            self.display_slot.close()

    def _put(self, slot: queues.Slot, item) -> None:
        try:
            slot.put(item)
        except queues.Stopped:
            self.stats.drop("stopped")
            raise
