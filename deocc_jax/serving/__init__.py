"""deocc deployed: the whole photo pipeline as an HTTP service, and over photo archives on Beam.

    config     ServeConfig: the service's limits and batching (the serve flags)
    batcher    MicroBatcher: face crops of concurrent requests share one model call
    photos     PhotoService: one request's photo through infer's pipeline
    metrics    the Prometheus metrics
    app        the Starlette app: routes, limits, errors, deadlines
    server     uvicorn: bind, serve, graceful stop on SIGTERM (`python -m deocc_jax.serve`)
    beam_job   the Beam job over photo archives (`python -m deocc_jax.infer_beam`)

The package sits above `infer_lib` (it decodes and encodes with it, restores with
`restoration.frames`) and below the binaries. See docs/serving.md.
"""
