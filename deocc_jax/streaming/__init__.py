"""Live de-occlusion: pipelined capture, detection, model and output with bounded latency."""
