"""User-facing errors.

Every error a user can cause is a `PixdeployError`: the CLI prints its message on one line and exits
non-zero, with no traceback. Anything else escaping is a bug in pixdeploy.
"""


class PixdeployError(Exception):
    """An error caused by input the user gave (a path, a value, a file)."""


class ConfigError(PixdeployError):
    """A model configuration value is invalid."""


class ImageError(PixdeployError):
    """An image cannot be read or is unusable."""


class DataError(PixdeployError):
    """A data set is missing, empty or malformed."""


class CheckpointError(PixdeployError):
    """A checkpoint is missing, damaged or not a pixdeploy checkpoint."""
