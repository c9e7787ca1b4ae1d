"""`infer` over a photo archive as an Apache Beam job (`python -m deocc_jax.infer_beam`).

    listing (infer's names and checks) -> Create -> Reshuffle -> BatchElements(batch_photos)
      -> RestoreFn: read, decode, find faces, align; one model call for the batch's crops;
         blend, encode, write -> manifest rows -> manifest.jsonl

Each photo gets the output `infer` gives it (`<stem>.png` restored; a photo without a
face copied unchanged under `<stem><its extension>`; an undecodable one only listed),
decoded, restored and encoded by the same functions, so with one photo per model call
(`batch_photos=1`, the default) the files are byte for byte `infer`'s. With more photos
per call XLA's batched convolutions may round a pixel differently (at most one grey
level). The model and MediaPipe are loaded once per worker (`DoFn.setup`).

Counters (namespace `deocc_infer_beam`): read = restored + no_face + rejected, and
rejected_<reason> per `io.images` reason; `run_job` checks that they add up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.restoration import infer_lib
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.faces.cascade import DEFAULT_MIN_FACE_PX
from deocc_jax.io import atomic, images
from deocc_jax.restoration import frames

METRICS_NAMESPACE = "deocc_infer_beam"
MANIFEST = "manifest.jsonl"
STATUSES = ("restored", "no_face", "rejected")


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """What each worker needs: the model and infer's photo settings.

    Attributes:
      model: any model `predictors.open_predictor` opens on the workers (None: the
        shipped one, found through DEOCC_PRETRAINED_DIR there).
      checkpoint: for training workdirs.
      batch_photos: photos whose crops share one model call (1: byte-identical to infer).
      max_faces, min_confidence, min_face_px, max_pixels, landmarker_model: as infer's flags.
    """
    model: str | None = None
    checkpoint: str | int = "latest"
    batch_photos: int = 1
    max_faces: int = 8
    min_confidence: float = 0.3
    min_face_px: float = DEFAULT_MIN_FACE_PX
    max_pixels: int = infer_lib.DEFAULT_MAX_PIXELS
    landmarker_model: str | None = None


def _remote(path: str) -> bool:
    return "://" in path


def plan(input_spec: str, output: str, *, overwrite: bool = False,
         list_remote: bool = True) -> list[tuple[str, str]]:
    """(input, output path) of every photo, with infer's names, checked before the job starts.

    Local inputs and outputs go through `infer_lib.plan_photos` (outputs never replace
    inputs, writable folder). Remote ones (gs://...) are listed with Beam's file systems.

    Args:
      input_spec: a photo, folder or glob (local or any Beam file system).
      output: the output folder.
      overwrite: replace existing outputs (else refused, as infer refuses them).
      list_remote: list a remote input (False for a dry run: nothing is read).

    Raises:
      errors.InvalidInputError: --output names an image file rather than a folder.
      errors.InputNotFoundError, errors.OutputExistsError, atomic.NotWritableError: see plan_photos.
    """
    if output.lower().endswith(infer_lib.IMAGE_EXTENSIONS):
        raise errors.InvalidInputError(f"--output {output}: the job writes a folder; give a folder")
    manifest = _join(output, MANIFEST)
    if not overwrite and not (_remote(output) and not list_remote) and FileSystems.exists(manifest):
        raise errors.OutputExistsError(f"--output {output}: holds {MANIFEST} of an earlier run; "
                                       "pass --overwrite to replace its outputs")
    if not _remote(input_spec) and not _remote(output):
        inputs, outputs = infer_lib.plan_photos(input_spec, output, overwrite=overwrite)
        return [(p, outputs[p]) for p in inputs]
    if not list_remote and _remote(input_spec):
        return []
    spec = input_spec
    if not _remote(spec) and os.path.isdir(spec):
        spec = os.path.join(spec, "*")
    elif _remote(spec) and not any(c in spec for c in "*?[") and not spec.lower().endswith(
            infer_lib.IMAGE_EXTENSIONS):
        spec = spec.rstrip("/") + "/*"
    found = [m.path for m in FileSystems.match([spec])[0].metadata_list]
    inputs = sorted(p for p in found if p.lower().endswith(infer_lib.IMAGE_EXTENSIONS))
    if not inputs:
        raise errors.InputNotFoundError(f"--input: no images ({', '.join(infer_lib.IMAGE_EXTENSIONS)}) "
                                        f"found at {input_spec!r}")
    outputs = infer_lib.photo_outputs(inputs, output)  # infer's names, not a copy
    return [(p, outputs[p]) for p in inputs]


def _join(folder: str, name: str) -> str:
    # FileSystems.join needs the remote file system's package even to join a name; a dry run has none.
    return folder.rstrip("/") + "/" + name if _remote(folder) else os.path.join(folder, name)


def _write(path: str, data: bytes) -> None:
    """A complete file or none: `io.atomic` locally; remote file systems publish on close."""
    if _remote(path):
        # writer-policy: exempt (object stores publish an object whole, when it is closed)
        with FileSystems.create(path) as f:
            f.write(data)
    else:
        # Existing outputs were refused when the job was planned (unless --overwrite): one
        # here is this photo's own, from a bundle the runner retried.
        atomic.write_bytes(path, data, overwrite=True)


class RestoreFn(beam.DoFn):
    """A batch of (input, output) pairs -> their files written and one manifest row each."""

    def __init__(self, options: JobOptions):
        self.options = options
        self.counters = {name: Metrics.counter(METRICS_NAMESPACE, name)
                         for name in ("read", "faces", *STATUSES,
                                      *(f"rejected_{r}" for r in images.REASONS))}

    def setup(self):
        o = self.options
        self.model = predictors.open_predictor(o.model, o.checkpoint)
        frames.check_model(self.model, None)
        self.analyzer = FaceAnalyzer(mode="image", num_faces=o.max_faces,
                                     min_confidence=o.min_confidence, model_path=o.landmarker_model,
                                     min_face_px=o.min_face_px)

    def teardown(self):
        analyzer = getattr(self, "analyzer", None)
        if analyzer is not None:
            analyzer.close()

    def _row(self, status: str, path: str, out: str | None, faces: int, **extra) -> dict[str, Any]:
        self.counters[status].inc()
        self.counters["faces"].inc(faces)
        if status == "rejected":
            self.counters[f"rejected_{extra['reason']}"].inc()
        return {"input": path, "output": out, "faces": faces, "status": status, **extra}

    def _prepare(self, path: str, out: str):
        """(manifest row, None) for a photo that is done, or (None, prepared photo)."""
        self.counters["read"].inc()
        try:
            with FileSystems.open(path) as f:
                data = f.read()
            image, alpha = infer_lib.decode_photo(data, self.options.max_pixels, name=path)
        except images.DecodeError as e:
            return self._row("rejected", path, None, 0, reason=e.reason, error=errors.one_line(e)), None
        except OSError as e:  # vanished or unreadable since the listing
            return self._row("rejected", path, None, 0, reason=images.UNREADABLE,
                             error=f"{path}: {images.UNREADABLE}: {e}"), None
        search = self.analyzer.find(image)
        faces = search.faces
        if not faces:
            copy = infer_lib.unchanged_copy_path(path, out)
            _write(copy, data)
            return self._row("no_face", path, copy, 0, no_face_reason=search.reason,
                             faces_too_small=len(search.too_small)), None
        crops = frames.align_faces(image, [f.landmarks for f in faces], self.model.resolution)
        return None, (path, out, image, alpha, crops, len(search.too_small))

    def process(self, batch: Sequence[tuple[str, str]]) -> Iterable[dict[str, Any]]:
        prepared = []
        for path, out in batch:
            row, photo = self._prepare(path, out)
            if row is not None:
                yield row
            else:
                prepared.append(photo)
        if not prepared:
            return
        # One model call for every crop of the batch (frames.run_model is infer's call).
        everything = frames.FaceCrops([m for p in prepared for m in p[4].matrices],
                                      np.concatenate([p[4].crops for p in prepared]))
        result = frames.run_model(self.model, everything)
        start = 0
        for path, out, image, alpha, crops, too_small in prepared:
            k = len(crops)
            mine = frames.ModelOutput(result.restored[start:start + k], result.masks[start:start + k])
            start += k
            restored, _ = frames.blend_faces(image, crops, mine)
            _write(out, infer_lib.encode_image(restored, alpha, os.path.splitext(out)[1], out))
            yield self._row("restored", path, out, k, faces_too_small=too_small)


def build_pipeline(p: beam.Pipeline, pairs: list[tuple[str, str]], output: str,
                   options: JobOptions) -> None:
    """Adds the job's transforms to `p`: restore every pair, write the manifest."""
    rows = (p
            | "Photos" >> beam.Create(pairs)
            | "Spread" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=options.batch_photos)
            | "Restore" >> beam.ParDo(RestoreFn(options)))
    _ = (rows
         | "ToJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
         | "Manifest" >> beam.io.WriteToText(_join(output, MANIFEST), num_shards=1,
                                             shard_name_template=""))


def counters(result) -> dict[str, int]:
    """The job's counters by name (committed values; attempted where a runner has no others)."""
    values: dict[str, int] = {}
    for c in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(
            METRICS_NAMESPACE))["counters"]:
        values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(
            c.committed if c.committed is not None else c.attempted)
    return values


def check_counts(counts: dict[str, int]) -> None:
    """read = restored + no_face + rejected, and rejected = the sum over reasons.

    Raises:
      RuntimeError: they do not add up (a runner lost or repeated photos).
    """
    done = sum(counts.get(s, 0) for s in STATUSES)
    by_reason = sum(counts.get(f"rejected_{r}", 0) for r in images.REASONS)
    if counts.get("read", 0) != done or counts.get("rejected", 0) != by_reason:
        raise RuntimeError(f"the job's counters do not add up: {counts}")


def run_job(input_spec: str, output: str, options: JobOptions = JobOptions(), *,
            pipeline_args: Sequence[str] = (), overwrite: bool = False, dry_run: bool = False,
            log=logging.info) -> dict[str, Any]:
    """Runs the job (or, with `dry_run`, only validates its options and builds its graph).

    Args:
      input_spec: photos: a file, folder or glob, local or on a Beam file system (gs://...).
      output: the output folder (local or remote).
      options: model and photo settings.
      pipeline_args: Beam's options (--runner, --direct_num_workers, Dataflow's --project...).
      overwrite: replace outputs of an earlier run (else they are refused before it starts).
      dry_run: Beam validates the options for their runner and the graph is built and
        serialised as the runner would receive it; nothing is listed remotely, read,
        written or submitted.

    Returns:
      {"photos": listed, "counters": {...}} (counters empty for a dry run), plus
      "graph": the transform names for a dry run.

    Raises:
      errors.UserError: bad flags or paths (before anything runs).
      RuntimeError: the counters do not add up.
    """
    if options.batch_photos < 1:
        raise errors.InvalidInputError(f"--batch_photos: must be >= 1, got {options.batch_photos}")
    if options.model is not None and not _remote(options.model) and not os.path.exists(options.model):
        raise errors.InputNotFoundError(f"--model {options.model}: does not exist")
    if options.model is None and not dry_run:
        predictors.default_model_path()  # the shipped model must be there (a clear error if not)
    pairs = plan(input_spec, output, overwrite=overwrite, list_remote=not dry_run)
    try:
        beam_options = PipelineOptions(list(pipeline_args))
        p = beam.Pipeline(options=beam_options)  # Beam validates the options for the runner here
    except ValueError as e:
        raise errors.InvalidInputError(f"Beam options: {errors.one_line(e)}") from None
    build_pipeline(p, pairs, output, options)
    if dry_run:
        proto = p.to_runner_api()  # pickles every DoFn, as submitting would
        names = sorted(t.unique_name for t in proto.components.transforms.values()
                       if "/" not in t.unique_name and t.unique_name)
        log(f"dry run: {len(pairs)} photo(s) listed, options valid for "
            f"{type(p.runner).__name__}, graph {names}; nothing submitted")
        return {"photos": len(pairs), "counters": {}, "graph": names}
    log(f"infer_beam: {len(pairs)} photo(s) from {input_spec} -> {output}")
    result = p.run()
    result.wait_until_finish()
    counts = counters(result)
    check_counts(counts)
    rejected = {r: counts.get(f"rejected_{r}", 0) for r in images.REASONS if counts.get(f"rejected_{r}")}
    log(f"infer_beam: {counts.get('read', 0)} read: {counts.get('restored', 0)} restored "
        f"({counts.get('faces', 0)} faces), {counts.get('no_face', 0)} without a face (copied), "
        f"{counts.get('rejected', 0)} rejected {rejected or ''}; manifest "
        f"{_join(output, MANIFEST)}")
    return {"photos": len(pairs), "counters": counts}
