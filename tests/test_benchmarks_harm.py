"""benchmarks.harm: choosing the gate and compositing with it."""

import numpy as np

from tests.test_blend import blobs


def test_harm_benchmark_choice_and_composite():
    from benchmarks import harm_lib as harm
    rows = [{"min_component_frac": f, "occluded_share_skipped": s}
            for f, s in ((0.0, 0.0), (0.01, 0.005), (0.02, 0.015), (0.03, 0.01))]
    assert harm.choose(rows, 0.01)["min_component_frac"] == 0.03
    assert harm.choose(rows, 0.0)["min_component_frac"] == 0.0
    inputs = np.full((1, 64, 64, 3), 10, np.uint8)
    restored = np.full((1, 64, 64, 3), 250, np.uint8)
    out, alpha = harm.composite(inputs, restored, blobs()[None], 0.015)
    assert out[0, 40, 28, 0] == 250 and out[0, 6, 51, 0] == 10 and alpha[0, 6, 51] == 0
    out, _ = harm.composite(inputs, restored, blobs()[None], 0.0)
    assert out[0, 6, 51, 0] > 10
