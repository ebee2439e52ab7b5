"""Vehicle-side inference: ONNX Runtime engine, pre/post-processing. numpy + OpenCV only, never torch."""
