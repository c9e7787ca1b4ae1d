"""A progress bar with rate and ETA for long loops over frames or files (tqdm).

    with progress.bar(total=reader.info.frame_count, desc="clip.mp4", unit="frame",
                      quiet=quiet) as bar:
        for frame in frames:
            ...
            bar.update()

The bar goes to stderr (stdout stays for results and reports) and redraws at
most twice a second. `quiet=True` turns it off; so does a stderr that is not a
terminal unless `force=True` (logs of batch jobs stay readable).
"""

from __future__ import annotations

import sys
from typing import Any

import tqdm


def bar(total: int | None, desc: str, *, unit: str = "frame", quiet: bool = False,
        force: bool = False, **kwargs: Any) -> tqdm.tqdm:
    """A tqdm progress bar (a context manager with `update(n=1)` and `set_postfix_str`).

    Args:
      total: the number of steps, if known (then the bar shows an ETA).
      desc: what is being processed (a file name).
      unit: what one step is ("frame", "photo").
      quiet: no bar at all.
      force: draw even when stderr is not a terminal.
      **kwargs: passed to `tqdm.tqdm`.
    """
    disable = quiet or not (force or sys.stderr.isatty())
    return tqdm.tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                     mininterval=0.5, dynamic_ncols=True, **kwargs)
