"""`python -m deocc_jax.serve` on a free loopback port: every route and error, batching, SIGTERM.

One server (the shipped model) serves the whole module; the SIGTERM test runs last and stops
it. The micro-batcher is also tested alone, with a fake model. The Dockerfile and the
Kubernetes manifest are read and checked against the server's flags and routes.
"""

import email.parser
import email.policy
import http.client
import io
import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deocc_jax.artifacts import predictors
from deocc_jax.restoration import infer_lib
from deocc_jax.serving import app as app_lib
from deocc_jax.serving.batcher import MicroBatcher

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_BODY_MB = 1
MAX_PIXELS = 2_000_000
MAX_QUEUE = 3
SERVER_FLAGS = ["--port=0", "--max_batch=2", "--max_wait_ms=500", f"--max_body_mb={MAX_BODY_MB}",
                f"--max_pixels={MAX_PIXELS}", f"--max_queue={MAX_QUEUE}", "--timeout_s=60",
                "--workers=3", "--noaccess_log"]


# ----------------------------------------------------------------------------- the batcher alone


def _fake_model(calls):
    def model(crops):
        calls.append(len(crops))
        if (crops == 13).any():
            raise ValueError("poisoned crop")
        return {"deoccluded": crops + 1, "mask": crops[..., :1].astype(np.float32)}
    return model


def test_batcher_groups_concurrent_items_and_splits_results_back():
    calls = []
    batcher = MicroBatcher(_fake_model(calls), max_batch=4, max_wait_s=0.5)
    try:
        a = np.full((1, 2, 2, 3), 1, np.uint8)
        b = np.full((2, 2, 2, 3), 5, np.uint8)
        ea, eb = batcher.expect(), batcher.expect()  # two requests on their way
        fa, fb = ea.submit(a, "a"), eb.submit(b, "b")
        ra, rb = fa[0].result(5), fb[0].result(5)
        assert calls == [3]  # one call for both requests
        np.testing.assert_array_equal(ra["deoccluded"], a + 1)
        np.testing.assert_array_equal(rb["deoccluded"], b + 1)
        # More crops than max_batch: split into calls of at most max_batch.
        big = batcher.submit(np.zeros((6, 2, 2, 3), np.uint8), "c")
        assert [len(f.result(5)["deoccluded"]) for f in big] == [4, 2]
        assert max(calls) <= 4
    finally:
        batcher.close()


def test_batcher_failure_of_one_item_does_not_fail_the_others():
    calls = []
    batcher = MicroBatcher(_fake_model(calls), max_batch=8, max_wait_s=0.5)
    try:
        eg, eb = batcher.expect(), batcher.expect()
        good = eg.submit(np.full((1, 2, 2, 3), 1, np.uint8), "good")[0]
        bad = eb.submit(np.full((1, 2, 2, 3), 13, np.uint8), "bad")[0]
        assert good.result(5)["deoccluded"][0, 0, 0, 0] == 2
        with pytest.raises(ValueError, match="poisoned"):
            bad.result(5)
        assert calls[0] == 2  # they were batched, then run alone
    finally:
        batcher.close()


def test_batcher_waits_only_for_requests_on_their_way():
    calls = []
    batcher = MicroBatcher(_fake_model(calls), max_batch=8, max_wait_s=30.0)
    try:
        crop = np.zeros((1, 2, 2, 3), np.uint8)
        # Nothing announced: the call runs at once, not after max_wait_s.
        batcher.submit(crop, "alone")[0].result(5)
        # One request announced: the queued crop waits for it and they share a call...
        coming = batcher.expect()
        first = batcher.expect().submit(crop, "first")[0]
        time.sleep(0.3)
        assert not first.done()
        coming.submit(crop, "second")[0].result(5)
        assert first.done() and calls == [1, 2]
        # ... and one that ends without crops (no face, a bad photo) stops the wait.
        with batcher.expect():
            waiting = batcher.expect().submit(crop, "third")[0]
            time.sleep(0.3)
            assert not waiting.done()
        waiting.result(5)
        assert calls == [1, 2, 1]
    finally:
        batcher.close()


def test_batcher_skips_cancelled_items():
    calls = []
    gate = threading.Event()

    def slow(crops):
        gate.wait(5)
        return _fake_model(calls)(crops)
    batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0.0)
    try:
        first = batcher.submit(np.zeros((1, 2, 2, 3), np.uint8))[0]
        time.sleep(0.2)  # the model thread is now inside the first call
        second = batcher.submit(np.zeros((1, 2, 2, 3), np.uint8))[0]
        assert second.cancel()
        gate.set()
        first.result(5)
        batcher.close(5)
        assert calls == [1]
    finally:
        gate.set()
        batcher.close(5)


def test_multipart_body_parses_with_the_standard_library():
    body, ctype = app_lib.multipart_mixed([("image", "image/png", b"\x89PNG1"),
                                           ("mask", "image/png", b"\x89PNG22")])
    parts = _parse_multipart(ctype, body)
    assert [(p.get_param("name", header="content-disposition"), p.get_content_type(),
             p.get_payload(decode=True)) for p in parts] == [
        ("image", "image/png", b"\x89PNG1"), ("mask", "image/png", b"\x89PNG22")]


# ----------------------------------------------------------------------------- the server


def _parse_multipart(ctype: str, body: bytes):
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    assert msg.is_multipart()
    return list(msg.iter_parts())


class Server:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port

    def request(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, body, ctype="image/jpeg", path=app_lib.DEOCCLUDE, headers=None):
        return self.request("POST", path, body, {"Content-Type": ctype, **(headers or {})})

    def metrics(self) -> dict:
        status, _, body = self.request("GET", app_lib.METRICS)
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def held_request(self, body: bytes, sent: int) -> socket.socket:
        """A POST whose headers and first `sent` body bytes are sent; the rest is not (yet)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        sock.sendall(f"POST {app_lib.DEOCCLUDE} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:sent])
        return sock

    def wait_queue_depth(self, n: int, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics()[("deocc_queue_depth", ())] == n:
                return
            time.sleep(0.05)
        raise AssertionError(f"queue depth never reached {n}")


def _finish(sock: socket.socket, body: bytes, sent: int):
    """Sends the rest of a held request; returns (status, headers, body) of its response."""
    if body[sent:]:
        sock.sendall(body[sent:])
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "deocc_jax.serve", *SERVER_FLAGS], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        assert match, f"no 'serving on' line: {line!r}; stderr: {log.read_text()[-3000:]}"
        srv = Server(proc, int(match.group(1)))
        deadline = time.monotonic() + 240
        while srv.request("GET", app_lib.READYZ)[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def photo(faces_dir) -> bytes:
    return (faces_dir / "100.jpg").read_bytes()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _error(status, headers, body, expected_status, words):
    assert status == expected_status, body[:300]
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["error"]
    assert "\n" not in message and words in message, message


def test_probes_and_metrics_format(server):
    assert server.request("GET", app_lib.HEALTHZ)[:1] == (200,)
    status, _, body = server.request("GET", app_lib.READYZ)
    assert status == 200 and json.loads(body) == {"status": "ready"}
    status, headers, body = server.request("GET", app_lib.METRICS)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"deocc_requests", "deocc_request_seconds", "deocc_faces_per_request", "deocc_batch_size",
            "deocc_batch_requests", "deocc_queue_depth", "deocc_ready"} <= names


def test_deocclude_returns_the_restored_photo_as_png(server, photo):
    status, headers, body = server.post(photo)
    assert status == 200, body[:300]
    assert headers["content-type"] == "image/png" and headers["x-deocc-faces"] == "1"
    restored = np.asarray(Image.open(io.BytesIO(body)))
    original, _ = infer_lib.decode_photo(photo)
    assert restored.shape == original.shape
    changed = np.any(restored != original, axis=-1)
    assert 0.01 < changed.mean() < 0.6  # the face was restored, the rest left alone
    assert not changed[:5].any() and not changed[-5:].any()  # far from the face: untouched pixels
    metrics = server.metrics()
    assert metrics[("deocc_faces_per_request_count", ())] >= 1
    assert metrics[("deocc_requests_total", (("method", "POST"), ("route", app_lib.DEOCCLUDE),
                                              ("status", "200")))] >= 1


def test_a_photo_alone_comes_back_as_infer_writes_it(server, faces_dir, tmp_path):
    infer_lib.process_photos(predictors.open_predictor(None), str(faces_dir / "104.jpg"),
                             str(tmp_path), quiet=True, log=lambda s: None)
    status, headers, body = server.post((faces_dir / "104.jpg").read_bytes())
    assert status == 200
    # infer's pixels, stored without compression (--compress_png would send infer's very bytes).
    written = np.asarray(Image.open(tmp_path / "104.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), written)
    assert body == infer_lib.encode_image(written, compress=False)


def test_stored_png_is_lossless_and_uncompressed(faces_dir):
    rgb, _ = infer_lib.read_photo(str(faces_dir / "104.jpg"))
    alpha = np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint32).reshape(rgb.shape[:2]) % 256
    for image, a, channels in ((rgb, None, 3), (rgb, alpha.astype(np.uint8), 4)):
        stored = infer_lib.encode_image(image, a, ".png", compress=False)
        compressed = infer_lib.encode_image(image, a, ".png")
        assert len(stored) > image.shape[0] * image.shape[1] * channels > len(compressed)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored))),
                                      np.asarray(Image.open(io.BytesIO(compressed))))
    # Other formats ignore it.
    assert infer_lib.encode_image(rgb, None, ".jpg", compress=False) == infer_lib.encode_image(rgb, None, ".jpg")


def test_mask_true_returns_multipart_image_and_mask(server, photo):
    status, headers, body = server.post(photo, path=app_lib.DEOCCLUDE + "?mask=true")
    assert status == 200 and headers["x-deocc-faces"] == "1"
    image, mask = _parse_multipart(headers["content-type"], body)
    assert image.get_param("name", header="content-disposition") == "image"
    assert mask.get_param("name", header="content-disposition") == "mask"
    assert image.get_content_type() == mask.get_content_type() == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(image.get_payload(decode=True))))
    grey = np.asarray(Image.open(io.BytesIO(mask.get_payload(decode=True))))
    assert grey.shape == picture.shape[:2] and grey.max() > 127 and grey.min() == 0


def test_photo_without_a_face_comes_back_unchanged(server):
    flat = _png(np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    status, headers, body = server.post(flat, ctype="image/png")
    assert status == 200 and headers["x-deocc-faces"] == "0"
    assert body == flat and headers["content-type"] == "image/png"


def test_bad_requests_are_json_errors(server, photo):
    _error(*server.post(b"this is not an image"), 400, "not_an_image")
    _error(*server.post(photo[: len(photo) // 2]), 400, "unreadable")
    limit = MAX_BODY_MB * 1024 * 1024
    # Refused from Content-Length alone, before any of the body is read...
    declared = server.held_request(b"x" * (limit + 1), 0)
    _error(*_finish(declared, b"", 0), 413, "--max_body_mb")
    # ... and, chunked (no length given), as soon as the bytes read pass the limit.
    chunks = iter([b"x" * 65536] * (limit // 65536) + [b"x"])
    _error(*server.post(chunks), 413, "--max_body_mb")
    big = _png(np.zeros((1000, MAX_PIXELS // 1000 + 1, 3), np.uint8))  # small file, many pixels
    _error(*server.post(big, ctype="image/png"), 413, "--max_pixels")
    _error(*server.request("GET", app_lib.DEOCCLUDE), 405, "Method Not Allowed")
    _error(*server.request("DELETE", app_lib.READYZ), 405, "Method Not Allowed")
    _error(*server.post(photo, ctype="text/plain"), 415, "image/jpeg")
    _error(*server.post(photo, path=app_lib.DEOCCLUDE + "?mask=maybe"), 400, "mask")
    _error(*server.request("GET", "/nope"), 404, "Not Found")
    _error(*server.post(photo, headers={app_lib.TIMEOUT_HEADER: "0.001"}), 504, "deadline")
    assert server.request("GET", app_lib.HEALTHZ)[0] == 200  # none of it hurt the server


def _shared_calls(server) -> float:
    m = server.metrics()
    return m[("deocc_batch_requests_count", ())] - m[("deocc_batch_requests_bucket", (("le", "1.0"),))]


def test_concurrent_requests_share_a_model_call_and_bad_ones_fail_alone(server, photo):
    before = _shared_calls(server)
    half = len(photo) // 2
    held = [server.held_request(photo, half) for _ in range(2)]
    bad = server.held_request(photo[:half], half)  # a truncated photo among them
    server.wait_queue_depth(3)
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i, s=s, b=b: results.__setitem__(i, _finish(s, b, half)))
               for i, (s, b) in enumerate(zip(held + [bad], [photo, photo, photo[:half]]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r[0] for r in results] == [200, 200, 400], [r[2][:200] for r in results]
    assert results[0][1]["x-deocc-faces"] == results[1][1]["x-deocc-faces"] == "1"
    assert _shared_calls(server) == before + 1  # the two good photos: one model call


def test_queue_full_is_503_with_retry_after(server, photo):
    held = [server.held_request(photo, 100) for _ in range(MAX_QUEUE)]
    server.wait_queue_depth(MAX_QUEUE)
    status, headers, body = server.post(photo)
    _error(status, headers, body, 503, "--max_queue")
    assert headers["retry-after"] == str(app_lib.RETRY_AFTER_S)
    assert [_finish(s, photo, 100)[0] for s in held] == [200] * MAX_QUEUE


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, photo):
    held = server.held_request(photo, 100)
    server.wait_queue_depth(1)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    status, headers, _ = _finish(held, photo, 100)
    assert status == 200 and headers["x-deocc-faces"] == "1"
    assert server.proc.wait(60) == 0
    assert "stopped" in server.proc.stdout.read()


# ----------------------------------------------------------------------------- deployment files


def _flag_names(args) -> set[str]:
    return {a[2:].split("=")[0] for a in args if a.startswith("--")}


def test_dockerfile_and_kubernetes_manifest_match_the_server():
    # The binary's flags, read from its source (importing it would define them in this process).
    defined = set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"',
                             (REPO / "deocc_jax" / "serve.py").read_text()))
    assert {"port", "host", "model", "timeout_s"} <= defined

    docker = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", docker, re.M).group(1))
    assert cmd[0] == "deocc-serve" and _flag_names(cmd) <= defined
    port = int(re.search(r"--port=(\d+)", " ".join(cmd)).group(1))
    assert re.search(rf"^EXPOSE {port}$", docker, re.M)
    assert "--host=0.0.0.0" in cmd
    assert re.search(r"^USER (?!root)\w+", docker, re.M)
    assert "DEOCC_ASSETS_DIR" in docker
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'deocc-serve = "deocc_jax.serve:run"' in pyproject

    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container.get("args", [])
    assert _flag_names(args) <= defined
    k8s_port = int(re.search(r"--port=(\d+)", " ".join(args)).group(1)) if args else port
    assert k8s_port == port and container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": app_lib.READYZ, "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": app_lib.HEALTHZ, "port": port}
    timeout = re.search(r"--timeout_s=([\d.]+)", " ".join(cmd + args))
    assert timeout and pod["terminationGracePeriodSeconds"] > float(timeout.group(1))  # in-flight finish
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == port
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        kinds["Deployment"]["metadata"]["name"]
