r"""The README's headline table, generated from the shipped models' metrics and the benchmarks.

    python -m benchmarks.headline            # rewrites the table in README.md
    python -m benchmarks.headline --check    # exit 1 if README.md's table is out of date

Sources (never typed in by hand): `pretrained/<model>/metrics.json` and `metrics_heldout.json`
(`launch.ship_model` runs `deocc_jax.evaluate` on the test splits) and
`benchmarks/results/inference.json` (`python -m benchmarks.inference`).
tests/test_docs.py checks the README's table equals what this renders.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
MODELS = (("deocc-realtime-128", "realtime"),)
BASELINES = (("opencv_telea", "OpenCV Telea¹"), ("opencv_ns", "OpenCV Navier-Stokes¹"),
             ("occluded_input", "doing nothing"))


def _load(*parts: str) -> dict[str, Any] | None:
    path = os.path.join(REPO, *parts)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _fmt(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render() -> str:
    """The Markdown table (and its footnote), from the result files that exist."""
    metrics = {name: _load("pretrained", name, "metrics.json") for name, _ in MODELS}
    heldout = {name: _load("pretrained", name, "metrics_heldout.json") for name, _ in MODELS}
    inference = _load("benchmarks", "results", "inference.json") or {}
    ref = metrics[MODELS[0][0]] or {}
    columns = [name for name, _ in MODELS] + [label for _, label in BASELINES]

    def model_cell(name: str, source: dict | None, key: str, digits: int) -> str:
        return _fmt(_get(source, "methods", "model", "overall", key), digits)

    def baseline_cell(method: str, source: dict | None, key: str, digits: int) -> str:
        return _fmt(_get(source, "methods", method, "overall", key), digits)

    rows = []
    n = ref.get("num_examples")
    quality = [
        (f"occluded-region PSNR, dB ↑ (test split: {n} faces of unseen LFW and UTKFace people)",
         "masked_psnr", 2, metrics),
        ("occluded-region SSIM ↑", "masked_ssim", 3, metrics),
        ("whole-image PSNR, dB ↑", "psnr", 2, metrics),
        ("expression error (blendshapes) ↓", "expression_error", 4, metrics),
        ("identity distance (dlib) ↓", "identity_distance", 3, metrics),
        ("faces restored closer to the person than the occluded input ↑",
         "identity_closer_than_input", 3, metrics),
        ("detail ratio (1 = the real face's fine structure; a blur is near 0)",
         "detail_ratio", 3, metrics),
        ("occluder remnants, share of mask pixels ↓", "remnants", 3, metrics),
        ("faces with nothing over them left untouched (≤ 1 % changed) ↑", "harm_ok_share", 3,
         metrics),
        ("occluded-region PSNR, dB ↑, on faces/ (a source never trained on)", "masked_psnr", 2,
         heldout),
    ]
    for label, key, digits, source in quality:
        cells = [model_cell(name, source[name], key, digits) for name, _ in MODELS]
        base_src = source[MODELS[0][0]]
        cells += [baseline_cell(m, base_src, key, digits) for m, _ in BASELINES]
        rows.append((label, cells))
    speed = [("model stage per face, 2 CPU cores, ms (p50)", ("model_stage", "p50_ms"), 1),
             ("live pipeline on 640x480 video, frames/s", ("live", "fps_out"), 1),
             ("live latency capture → output, ms (p95)", ("live", "latency_ms_p95"), 0)]
    # The speed/flicker run may predate the shipped weights: say so rather than mix them silently.
    recorded = {key: _get(inference, "models", key, "step") for _, key in MODELS}
    stale = {key: recorded[key] for name, key in MODELS
             if recorded[key] not in (None, _get(metrics[name], "checkpoints", "model", "step"))}
    mark = "²" if stale else ""
    for label, keys, digits in speed:
        cells = [_fmt(_get(inference, "models", key, *keys), digits) for _, key in MODELS]
        rows.append((label + mark, cells + ["–"] * len(BASELINES)))

    def flicker_cell(key: str) -> str:
        motion = _get(inference, "models", key, "flicker", "vs_per_frame", "stabilized", "by_motion")
        if not motion:
            return "–"
        shares = [_get(motion, m, "flicker_reduction") for m in ("still", "slow", "moving")]
        return " / ".join("–" if v is None else f"{100 * v:.0f} %" for v in shares)
    rows.append(("flicker removed by `--stabilize`, still / slow / moving face ↑" + mark,
                 [flicker_cell(key) for _, key in MODELS] + ["–"] * len(BASELINES)))
    lines = ["| | " + " | ".join(f"`{c}`" if c.startswith("deocc") else c for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    lines += ["", "¹ OpenCV's inpainting is given the true occluder mask; the models find it "
              "themselves. Identity and expression are averaged over the faces MediaPipe finds in "
              "every method's output."]
    if stale:
        steps = ", ".join(f"{k} at step {v:,}" for k, v in stale.items())
        lines += ["", f"² `benchmarks/results/inference.json` measured earlier weights ({steps}) of "
                  "the same architecture: speed does not depend on the weights; flicker was not "
                  "measured again."]
    return "\n".join(lines)


def rewrite(text: str, table: str) -> str:
    """`text` (README.md) with the part between the markers replaced by `table`."""
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    with open(README) as f:
        text = f.read()
    new = rewrite(text, render())
    if "--check" in argv:
        if new != text:
            print("README.md's headline table is out of date: run python -m benchmarks.headline")
            return 1
        return 0
    with open(README, "w") as f:
        f.write(new)
    print(f"wrote the headline table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
