"""ONNX export: native-layout ONNX models with metadata, a torch-vs-ORT parity check, onnxslim, INT8.

Deliberately imports nothing: `prune_perception.export.metadata` is torch-free and may be read by
the runtime; the exporter itself lives in `prune_perception.export.onnx_export` (needs torch).
"""
