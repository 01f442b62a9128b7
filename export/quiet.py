"""Third-party noise that is not the user's concern, silenced only while pixdeploy exports.

The PyTorch ONNX exporter logs one warning per torchvision operator it cannot register when
torchvision is absent (pixdeploy never uses torchvision), and torch.export raises a FutureWarning about
its own internal pytree API. Both are filtered by exact source and message, only inside the export
call: nothing is changed at import, and every other warning and log record still reaches the user.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# (logger name, message prefix) of log records that are dropped during export.
QUIET_LOGS = [("torch.onnx._internal.exporter._registration", "torchvision is not installed")]
# (category, message regex) of warnings that are ignored during export.
QUIET_WARNINGS = [(FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated")]


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    filters = [(logging.getLogger(name), _DropPrefix(prefix)) for name, prefix in QUIET_LOGS]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        with warnings.catch_warnings():
            for category, message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
