"""Writers of a trained generator in each serving format (SavedModel, ONNX, LiteRT)."""
