r"""Load test of the HTTP service (`deocc_jax.serve`) on 127.0.0.1, with and without batching.

  python -m benchmarks.serve                       # -> benchmarks/results/serve.json
  python -m benchmarks.serve --concurrency=1,4 --requests=60 --max_seconds=30 --output=/tmp/s.json

A server per setting (batched: --max_batch=8 --max_wait_ms; unbatched: --max_batch=1) is
started on a free loopback port with the shipped model and warmed up; then for each number of
concurrent clients (1, 4, 16), in --rounds parts that alternate the settings' order (so the
machine's other load weighs on both alike), each client sends real 640x480 one-face photos
(photos of ../shared/data/faces scaled and cropped in memory, JPEG, kept only if MediaPipe finds
exactly one face) back to back over a keep-alive connection, until --requests photos are done
or --max_seconds pass. Reported per setting and concurrency: photos/s, latency p50/p95/p99,
errors (any status but 200 or a response without exactly one face), and from the server's
/metrics the mean crops and requests per model call. "stage_cpu_ms" is what each stage of the
pipeline costs in CPU time (all threads of this process, median over the photos, one at a time):
it says which stage bounds the throughput (2000 / total = photos/s on 2 dedicated cores at best);
"response_png" the time and size of the response PNG as served (stored) and compressed.

The clients run in this process, on the same cores as the server, and the development machine's
2 cores are shared with other jobs: the JSON records the machine and the load average before and
after each level, so compare figures taken at similar load.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import cv2
import numpy as np
from absl import app, flags
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import common
from deocc_jax.artifacts import predictors
from deocc_jax.restoration import infer_lib
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.restoration import frames

DEFAULT_OUTPUT = os.path.join(common.REPO, "benchmarks", "results", "serve.json")
SETTINGS = {"batched": ["--max_batch=8", "--max_wait_ms=100"], "unbatched": ["--max_batch=1"]}
WIDTH, HEIGHT = 640, 480


def make_photos(photos_dir: str, count: int) -> list[bytes]:
    """`count` 640x480 JPEGs with exactly one face each, from the photos of `photos_dir`."""
    out = []
    with FaceAnalyzer(mode="image", num_faces=2) as analyzer:
        for path in infer_lib.collect_images(photos_dir):
            image = infer_lib.read_rgb(path)
            h, w = image.shape[:2]
            scale = max(WIDTH / w, HEIGHT / h)
            big = cv2.resize(image, (max(WIDTH, round(w * scale)), max(HEIGHT, round(h * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            y0, x0 = (big.shape[0] - HEIGHT) // 2, (big.shape[1] - WIDTH) // 2
            frame = np.ascontiguousarray(big[y0:y0 + HEIGHT, x0:x0 + WIDTH])
            if len(analyzer.detect(frame)) != 1:
                continue
            out.append(infer_lib.encode_image(frame, None, ".jpg"))
            if len(out) == count:
                return out
    raise RuntimeError(f"only {len(out)} one-face photos in {photos_dir}; wanted {count}")


def stage_cpu_ms(photos: list[bytes], repeats: int = 3) -> tuple[dict[str, float], dict[str, Any]]:
    """Median CPU milliseconds (process-wide) of each stage of the served pipeline, per photo.

    Returns:
      (stage -> ms, with "total"; the response PNG stored as served and compressed as with
      --compress_png: median ms and KiB of each).
    """
    model = predictors.open_predictor(None)
    times: dict[str, list[float]] = {}
    sizes: dict[str, list[int]] = {"stored": [], "compressed": []}

    def timed(stage, fn, *args):
        start = time.process_time()
        out = fn(*args)
        times.setdefault(stage, []).append(1000 * (time.process_time() - start))
        return out
    with FaceAnalyzer(mode="image", num_faces=8) as analyzer:
        for _ in range(repeats + 1):  # the first round warms up (compilation, caches)
            for data in photos:
                image, alpha = timed("decode", infer_lib.decode_photo, data)
                faces = timed("detect", analyzer.detect, image)
                crops = timed("align", frames.align_faces, image, [f.landmarks for f in faces],
                              model.resolution)
                out = timed("model", frames.run_model, model, crops)
                restored, _ = timed("blend", frames.blend_faces, image, crops, out)
                sizes["stored"].append(len(timed("encode_png", functools.partial(
                    infer_lib.encode_image, compress=False), restored, alpha, ".png")))
                sizes["compressed"].append(len(timed("encode_png_compressed",
                                                     infer_lib.encode_image, restored, alpha, ".png")))
    result = {k: round(statistics.median(v[len(photos):]), 1) for k, v in times.items()}
    compressed_ms = result.pop("encode_png_compressed")
    result["total"] = round(sum(result.values()), 1)
    png = {"stored": {"ms": result["encode_png"],
                      "kib": round(statistics.median(sizes["stored"]) / 1024)},
           "compressed (--compress_png, infer's bytes)": {
               "ms": compressed_ms, "kib": round(statistics.median(sizes["compressed"]) / 1024)}}
    return result, png


class ServerProcess:
    """`python -m deocc_jax.serve --port=0 ...` until `stop`; `port` once it listens."""

    def __init__(self, flags_: Sequence[str], startup_timeout_s: float = 600):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deocc_jax.serve", "--port=0", "--noaccess_log", *flags_],
            cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.port = int(match.group(1))
        deadline = time.monotonic() + startup_timeout_s
        while self.get("/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not become ready")
            time.sleep(0.5)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def batch_totals(self) -> dict[str, float]:
        """Sums and counts of the batch histograms (model calls, crops, requests)."""
        totals = {}
        for family in text_string_to_metric_families(self.get("/metrics")[1].decode()):
            for s in family.samples:
                if s.name in ("deocc_batch_size_sum", "deocc_batch_size_count",
                              "deocc_batch_requests_sum"):
                    totals[s.name] = s.value
        return totals

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(120)


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def run_clients(port: int, photos: list[bytes], clients: int, requests: int,
                max_seconds: float) -> dict[str, Any]:
    """`clients` keep-alive clients sending photos until `requests` are done or time is up.

    Returns:
      the raw outcome: latencies (s), errors, wall seconds, load average before and after.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    issued = [0]
    deadline = time.monotonic() + max_seconds

    def client(k: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= requests:
                    break
                i = issued[0]
                issued[0] += 1
            body = photos[(i + k) % len(photos)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/deocclude", body=body, headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200 and resp.getheader("X-Deocc-Faces") == "1"
                problem = None if ok else f"{resp.status} faces={resp.getheader('X-Deocc-Faces')}"
            except (OSError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                if problem:
                    errors.append(problem)
                else:
                    latencies.append(elapsed)
        conn.close()

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "wall": time.perf_counter() - start,
            "load": (round(load_before, 2), round(os.getloadavg()[0], 2))}


def summarize(clients: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's figures from the `run_clients` parts it was run in."""
    ms = [1000 * x for p in parts for x in p["latencies"]]
    errors = [e for p in parts for e in p["errors"]]
    wall = sum(p["wall"] for p in parts)
    return {
        "clients": clients, "requests": len(ms) + len(errors), "ok": len(ms),
        "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "seconds": round(wall, 2), "photos_per_s": round(len(ms) / wall, 2),
        "latency_ms": {"p50": round(_percentile(ms, 50), 1), "p95": round(_percentile(ms, 95), 1),
                       "p99": round(_percentile(ms, 99), 1),
                       "mean": round(statistics.fmean(ms), 1)} if ms else None,
        "load_avg_1min": [{"before": p["load"][0], "after": p["load"][1]} for p in parts],
    }


def load_level(port: int, photos: list[bytes], clients: int, requests: int,
               max_seconds: float) -> dict[str, Any]:
    """`run_clients`, summarized."""
    return summarize(clients, [run_clients(port, photos, clients, requests, max_seconds)])


def run_benchmark(*, concurrency: Sequence[int] = (1, 4, 16), requests: int = 200,
                  max_seconds: float = 60.0, photos_dir: str = common.DEFAULT_PHOTOS,
                  num_photos: int = 16, workers: int = 4, settings: Sequence[str] = ("batched", "unbatched"),
                  rounds: int = 2, log=print) -> dict[str, Any]:
    """Runs every setting at every concurrency; returns the record written as JSON.

    Every setting's server runs at once (idle while another is measured), and
    each level is split into `rounds` parts run in alternating order (A B, B A,
    ...): the machine's other load then weighs on every setting alike.
    """
    photos = make_photos(photos_dir, num_photos)
    stages, png = stage_cpu_ms(photos[:8])
    record: dict[str, Any] = {
        "what": f"POST /v1/deocclude, {WIDTH}x{HEIGHT} JPEG photos with one face each "
                f"({num_photos} distinct, from {photos_dir}), clients on the same machine",
        "bounds": {"requests_per_level": requests, "max_seconds_per_level": max_seconds,
                   "rounds": rounds},
        "machine": common.machine_info(), "code": common.code_state(),
        "stage_cpu_ms": stages, "response_png": png, "settings": {}}
    log(f"CPU per photo and stage (ms): {record['stage_cpu_ms']}; PNG: {record['response_png']}")
    server_flags = {name: [*SETTINGS[name], f"--workers={workers}"] for name in settings}
    servers: dict[str, ServerProcess] = {}
    levels: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    try:
        for name in settings:
            servers[name] = ServerProcess(server_flags[name])
            load_level(servers[name].port, photos, 2, 2 * len(photos), max_seconds)  # warm every path
        for clients in concurrency:
            parts: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
            calls = {name: {} for name in settings}
            for r in range(rounds):
                for name in (settings if r % 2 == 0 else list(reversed(settings))):
                    before = servers[name].batch_totals()
                    parts[name].append(run_clients(servers[name].port, photos, clients,
                                                   -(-requests // rounds), max_seconds / rounds))
                    after = servers[name].batch_totals()
                    for key in after:
                        calls[name][key] = calls[name].get(key, 0) + after[key] - before.get(key, 0)
            for name in settings:
                level = summarize(clients, parts[name])
                n = calls[name].get("deocc_batch_size_count", 0)
                if n:
                    level["model_calls"] = int(n)
                    level["crops_per_call"] = round(calls[name]["deocc_batch_size_sum"] / n, 2)
                    level["requests_per_call"] = round(calls[name]["deocc_batch_requests_sum"] / n, 2)
                log(f"{name} ({' '.join(server_flags[name])}), {clients} client(s): "
                    f"{level['photos_per_s']} photos/s, p50/p95/p99 "
                    f"{level['latency_ms'] and list(level['latency_ms'].values())[:3]} ms, "
                    f"{level['errors']} errors, {level.get('crops_per_call')} crops per model call")
                levels[name].append(level)
    finally:
        exit_status = {name: server.stop() for name, server in servers.items()}
    for name in settings:
        record["settings"][name] = {"server_flags": server_flags[name], "levels": levels[name],
                                    "exit_status_after_sigterm": exit_status.get(name)}
    return record


_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "4", "16"], "Concurrent clients per level.")
_REQUESTS = flags.DEFINE_integer("requests", 200, "Photos per level (the bound on count).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 60.0, "Seconds per level (the bound on time).")
_PHOTOS = flags.DEFINE_string("photos", common.DEFAULT_PHOTOS, "Face photos to make the requests from.")
_NUM_PHOTOS = flags.DEFINE_integer("num_photos", 16, "Distinct photos sent.")
_WORKERS = flags.DEFINE_integer("workers", 4, "The server's --workers.")
_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), f"Server settings: {list(SETTINGS)}.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Parts each level is split into, run in alternating "
                               "order of the settings.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", DEFAULT_OUTPUT, "Where the JSON goes.")


def main(argv):
    del argv
    record = run_benchmark(concurrency=[int(c) for c in _CONCURRENCY.value], requests=_REQUESTS.value,
                           max_seconds=_MAX_SECONDS.value, photos_dir=_PHOTOS.value,
                           num_photos=_NUM_PHOTOS.value, workers=_WORKERS.value,
                           settings=_SETTINGS.value, rounds=_ROUNDS.value)
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
