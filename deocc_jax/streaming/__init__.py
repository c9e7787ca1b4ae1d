"""Live de-occlusion: pipelined capture, detection, model and output with bounded latency.

    session      one `live` run: source, model, outputs, pipeline, report (`python -m deocc_jax.live`)
    pipeline     the four stage threads and their one-frame hand-offs
    queues       the hand-off slot (newest wins; blocking for lossless file runs)
    sources      a camera, or a video file played as if it were one (`--realtime`)
    tracking     face landmarks per frame: MediaPipe's own tracking, or flow between keyframes
    restore      align, model, blend for one frame (blending is infer_lib's), guided masks
    stabilize    temporal stabilisation of the restored face in the aligned crop
    sinks        outputs: file (H.264 + audio), MJPEG server, virtual camera
    mjpeg        the MJPEG HTTP server (and a plain client for tests and benchmarks)
    virtualcam   pyvirtualcam with one-line errors that say what to install
    stats        frames in / out / dropped and latency percentiles
    clips        synthetic clips with known truth (a real photo panned, an occluder pinned)
    flicker      flicker and masked-PSNR measurement of processing variants, tracker comparison

The package sits above `infer_lib` (it reuses its blending) and below the binaries.
"""
