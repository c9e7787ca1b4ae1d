"""io.timing: stage timers and the strictly increasing milliseconds MediaPipe's VIDEO mode needs."""

import time

from deocc_jax.io import timing


def test_monotonic_ms_never_repeats_or_goes_back():
    to_ms = timing.MonotonicMs()
    # 1/3 ms apart rounds to the same millisecond; a camera's clock can step back.
    assert [to_ms(t) for t in (0.0, 0.0003, 0.0006, 0.010, 0.009, 0.5)] == [0, 1, 2, 10, 11, 500]


def test_stage_timer_counts_calls_and_time():
    timer = timing.StageTimer()
    for _ in range(2):
        with timer("model"):
            time.sleep(0.01)
    assert timer.calls == {"model": 2}
    assert timer.per_call_ms()["model"] >= 10.0
    assert timer.per_frame_ms(4)["model"] == timer.seconds["model"] * 1000.0 / 4
