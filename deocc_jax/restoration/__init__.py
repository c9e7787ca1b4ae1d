"""Restoring faces in photos and frames: align, run a model, stabilise over time, blend back.

Shared by `infer` (photos and video files) and `live` (streams), so every path
restores a face the same way.
"""
