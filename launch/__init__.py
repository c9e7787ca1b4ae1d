"""Launchers: the local quickstart, Cloud TPU VM pods, GPU clusters, Dataflow."""
