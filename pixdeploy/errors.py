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


class ContextLimitWarning(UserWarning):
    """Generation was cut short because the prompt leaves less context than the tokens asked for.
    Issued by the runtime API (``warnings``); the CLI prints it as one ``warning:`` line on stderr."""


class CpuClassWarning(UserWarning):
    """An int8-cpu variant runs on a CPU of another instruction-set class than the one its scheme was measured
    fastest on: it runs, maybe not at its fastest. Issued by `Pipeline.open`; the CLI prints one ``warning:`` line."""
