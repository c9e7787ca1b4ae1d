"""The deocc model shrunk to run in well under a second per step on CPU (tests, quickstart).

Same blind mode, mask head, compositing, attention and loss terms as
`deocc.py`, at 32 px with 8 base filters. Constant learning rate, so the
result of a run does not depend on num_train_steps (handy for resume tests).
"""

from configs import common, deocc


def get_config(arg=None):
    c = deocc.get_config("runlocal")
    c.optim.g = common.optimizer(1e-3, 0.5, 0.999, "constant")
    c.optim.d = common.optimizer(1e-3, 0.5, 0.999, "constant")
    c.optim.g.clip_norm = c.optim.d.clip_norm = 1.0
    c.optim.ema_decay = 0.9
    c.num_eval_examples = -1
    c.data.color_jitter = 0.05
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"unknown config variant {arg!r}; known: 'runlocal'")
    return c
