"""The model deocc ships (pretrained/deocc-realtime-128): 128 px, fast enough for live video on 2 CPU cores.

The reference model's losses, data and training, with a generator sized for
CPU latency: base width 16, depth 5, width capped at 128, no attention
(0.78 M parameters against the reference's 6.0 M; `benchmarks/inference.py`
has the measured latencies of both).

Variants: runlocal (tests).
"""

from configs import common, reference


def get_config(arg=None):
    c = reference.get_config()
    c.model.generator.update(dict(base_width=16, depth=5, max_width=128,
                                  self_attention_stride=0, attention_gates=False))
    # A discriminator sized like the generator: it costs most of a training step otherwise.
    c.model.discriminator.base_width = 16
    # Cheaper steps buy more of them: validation occluded-region PSNR rose 15.2 / 17.7 / 18.6
    # dB at 500 / 1,500 / 2,500 steps (about 0.7 steps/s on 2 cores: 2 hours for 5,000).
    c.num_train_steps = 5_000
    c.eval_every_steps = 500
    for o in (c.optim.g, c.optim.d):
        o.warmup_steps = 300
    return common.apply_arg(c, arg, {"runlocal": reference.runlocal})
