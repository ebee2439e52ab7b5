"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class PrunePerceptionError(Exception):
    """Base class for errors caused by user input (files, configs, parameters)."""


class ConfigError(PrunePerceptionError):
    """A config file or option is invalid (unknown key, wrong type, out of range)."""


class DatasetError(PrunePerceptionError):
    """A dataset is missing, empty or malformed (images, annotations, class names)."""


class CheckpointError(PrunePerceptionError):
    """A checkpoint file is missing, corrupt or of an unknown format."""
