"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class PrunePerceptionError(Exception):
    """Base class for errors caused by user input (files, configs, parameters)."""


class ConfigError(PrunePerceptionError):
    """A config file or option is invalid (unknown key, wrong type, out of range)."""


class DatasetError(PrunePerceptionError):
    """A dataset is missing, empty or malformed (images, annotations, class names)."""


class CheckpointError(PrunePerceptionError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


class ExportError(PrunePerceptionError):
    """ONNX export failed: the exporter refused the model, or the exported model does not match torch."""


class ModelLoadError(PrunePerceptionError):
    """A model file is missing, unreadable, not ONNX, or its metadata/inputs/outputs do not fit the runtime."""


class ProviderError(PrunePerceptionError):
    """An ONNX Runtime execution provider is unknown, or the required one is not active."""


class InputImageError(PrunePerceptionError):
    """An input image is empty, corrupt or of an unsupported shape/dtype."""


class BagError(PrunePerceptionError):
    """A rosbag2 bag is missing, truncated, unreadable, of an unsupported format, or lacks a needed topic."""
