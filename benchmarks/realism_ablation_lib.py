"""The realism ablation table: recipes compared by one `deocc_jax.evaluate` run.

Every arm is a model that `evaluate` scored on the same examples (`--model` and each
`--compare`), beside the baselines it always runs (doing nothing, OpenCV Telea and NS). A row
holds what a blur cannot win alone: occluded-region PSNR/SSIM, the detail ratio, identity
against doing nothing, remnants of the occluder and harm on bare faces; and whether the arm
still beats both OpenCV inpainters on PSNR and SSIM in every occluder category.
The recipe column is derived, not typed: each arm's config.json against the first arm's.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flax import traverse_util

BASELINES = ("occluded_input", "opencv_telea", "opencv_ns")
INPAINTERS = ("opencv_telea", "opencv_ns")
# Config sections whose differences make a recipe (the rest: paths, logging, eval sizes).
RECIPE_KEYS = ("loss", "model", "data", "optim", "num_train_steps")
COLUMNS = (
    ("masked_psnr", "occl. PSNR dB ↑", "{:.2f}"), ("masked_ssim", "occl. SSIM ↑", "{:.3f}"),
    ("detail_ratio", "detail ↑ (1 = real)", "{:.3f}"), ("identity_distance", "identity ↓", "{:.4f}"),
    ("identity_vs_nothing", "identity − nothing's ↓", "{:+.4f}"),
    ("identity_closer_than_input", "closer than input ↑", "{:.1%}"),
    ("remnants", "remnants ↓", "{:.1%}"), ("remnants_dark", "remnants, dark ↓", "{:.1%}"),
    ("harm_ok_share", "bare faces ≤1 % changed ↑", "{:.1%}"),
)


def recipe_diff(config: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe settings where `config` differs from `reference` ({dotted key: value})."""
    def recipe(c):
        flat = traverse_util.flatten_dict(c, sep=".")
        return {k: v for k, v in flat.items() if k.split(".")[0] in RECIPE_KEYS}

    a, b = recipe(config), recipe(reference)
    return {k: a.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _config_of(path: str) -> dict[str, Any] | None:
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


def category_losses(metrics: Mapping[str, Any], method: str) -> list[str]:
    """Categories where `method` does not beat both inpainters on occluded PSNR and SSIM."""
    per = metrics["methods"]
    lost = []
    for cat in metrics["categories"]:
        mine = per[method]["per_category"].get(cat)
        if mine is None:
            continue
        for key in ("masked_psnr", "masked_ssim"):
            if any(mine[key] <= per[b]["per_category"][cat][key] for b in INPAINTERS):
                lost.append(f"{cat} ({key.removeprefix('masked_')})")
    return lost


def build(metrics: Mapping[str, Any], paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Rows of the ablation from an evaluate metrics.json with several models.

    Args:
      metrics: the parsed metrics.json.
      paths: method name -> model folder, to read recipes from (default: the paths
        `evaluate` recorded under "checkpoints").
    """
    methods = metrics["methods"]
    arms = [m for m in methods if m not in BASELINES]
    if not arms:
        raise ValueError("the metrics hold no model, only baselines")
    recorded = {m: v.get("path") for m, v in metrics.get("checkpoints", {}).items()}
    paths = {**recorded, **(paths or {})}
    configs = {m: _config_of(paths[m]) if paths.get(m) else None for m in arms}
    reference = configs[arms[0]]
    nothing = methods["occluded_input"]["overall"]["identity_distance"]
    rows = []
    for m in list(arms) + list(BASELINES):
        o = methods[m]["overall"]
        row = {"method": m, "description": methods[m].get("description", "")}
        for key, _, _ in COLUMNS:
            row[key] = o.get(key)
        if o.get("identity_distance") is not None:
            row["identity_vs_nothing"] = o["identity_distance"] - nothing
        if m in arms:
            row["recipe_vs_first_arm"] = (recipe_diff(configs[m], reference)
                                          if configs[m] is not None and reference is not None
                                          else None)
            row["loses_to_inpainting_in"] = category_losses(metrics, m)
        rows.append(row)
    return {"split": metrics["split"], "num_examples": metrics["num_examples"],
            "data_dir": metrics["data_dir"], "rows": rows}


def _fmt(fmt: str, v: Any) -> str:
    return "–" if v is None else fmt.format(v)


def markdown(table: Mapping[str, Any]) -> str:
    head = "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " | beats OpenCV everywhere |"
    lines = [f"{table['num_examples']} examples, {table['split']} split of `{table['data_dir']}`",
             "", head, "|---|" + "---:|" * len(COLUMNS) + ":-:|"]
    for r in table["rows"]:
        beats = ("–" if "loses_to_inpainting_in" not in r else
                 "yes" if not r["loses_to_inpainting_in"] else
                 "no: " + ", ".join(r["loses_to_inpainting_in"]))
        cells = [_fmt(f, r.get(k)) for k, _, f in COLUMNS]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {beats} |")
    recipes = [(r["method"], r["recipe_vs_first_arm"]) for r in table["rows"]
               if r.get("recipe_vs_first_arm")]
    if recipes:
        lines += ["", "Recipes (settings that differ from the first row's):", ""]
        lines += [f"- {m}: " + ", ".join(f"`{k}={v}`" for k, v in d.items()) for m, d in recipes]
    return "\n".join(lines) + "\n"
