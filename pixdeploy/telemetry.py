"""Library telemetry, switched off: a command writes its outputs and nothing else.

onnxruntime (1.32) queues telemetry events with a device id in a database under the user's home folder
(``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``) from the moment it initialises, unless
``ORT_DISABLE_TELEMETRY=1`` is in the environment by then (the decision is latched for the process;
``onnxruntime.disable_telemetry_events()`` does not stop the files). OpenVINO's telemetry starts during
``import openvino`` and writes ``~/intel/stats`` and ``~/intel/openvino_ga_cid`` unless the user holds an
opt-out consent file there or the process looks like a CI job (``CI=true``).

Importing ``pixdeploy`` sets ``ORT_DISABLE_TELEMETRY=1`` (a value already in the environment is kept: the
user's own choice), before any pixdeploy module can import onnxruntime; child processes (Triton's
Python-backend models under ``pixdeploy serve``, torchrun workers) inherit it. OpenVINO is imported only
through `import_openvino`, which declines its telemetry for the import by ``CI=true`` and restores the
environment after it, so nothing is written under ``~/intel``. Torch-free; standard library only.
"""

from __future__ import annotations

import os
import sys
import threading

ORT_VARIABLE = "ORT_DISABLE_TELEMETRY"
_import_lock = threading.Lock()


def disable_onnxruntime() -> None:
    """Put ``ORT_DISABLE_TELEMETRY=1`` in this process's environment unless the user set the variable."""
    if not os.environ.get(ORT_VARIABLE):
        os.environ[ORT_VARIABLE] = "1"


def import_openvino():
    """``import openvino`` with its telemetry declined (it would write under ``~/intel``). ImportError as usual."""
    module = sys.modules.get("openvino")
    if module is not None:
        return module
    with _import_lock:
        before = os.environ.get("CI")
        os.environ["CI"] = "true"  # openvino_telemetry's opt-in check declines in a CI job: nothing written
        try:
            import openvino
        finally:
            if before is None:
                os.environ.pop("CI", None)
            else:
                os.environ["CI"] = before
    return openvino
