"""Start and stop a real Triton Inference Server on a pixdeploy model repository (torch-free).

The server is the `tritonserver` binary that the `nvidia-pytriton` wheel ships (x86_64 and aarch64,
glibc >= 2.35) with its Python backend; PyTriton's own Python API is not used, only its binary. The
wheel keeps one Python-backend stub per Python version beside the backend, so each run assembles a
small backend folder (the backend library plus the stub for this Python) in a temporary folder. The
server has no onnxruntime backend: it serves repositories written with `--backend python`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from pixdeploy.errors import PixdeployError
from pixdeploy.files import marked_temp_dir

EXTRA = 'pip install "pixdeploy[serve]"'


def triton_dist() -> Path:
    """The `tritonserver` folder inside the installed nvidia-pytriton wheel (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise PixdeployError(f"serving needs the Triton server from nvidia-pytriton: {EXTRA}")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise PixdeployError(f"nvidia-pytriton at {dist.parent} has no tritonserver binary (reinstall: {EXTRA})")
    return dist


def python_library_dir() -> str:
    """The Python-backend stub links libpython; a pyenv or venv Python keeps it outside the loader's path."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise PixdeployError(f"this Python ({sys.executable}) has no shared libpython, which Triton's Python "
                             "backend needs (use a distribution Python, or build with --enable-shared)")
    return libdir


def prepare_backends(dist: Path, workdir: Path) -> Path:
    """backends/python with the stub for this Python version, as PyTriton itself assembles it."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise PixdeployError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    backends = workdir / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_env(dist: Path) -> dict:
    env = os.environ.copy()
    # Copied out of the wheel, the backend library no longer finds the wheel's bundled libraries by RPATH.
    libs = [str(dist.parent.parent / "nvidia_pytriton.libs"), python_library_dir()]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    # The models import pixdeploy from this Python's site folders (venv, editable install included).
    env["PIXDEPLOY_SITE_DIRS"] = os.pathsep.join(site.getsitepackages() + [site.getusersitepackages()])
    return env


# Temporary folders of serve (its repository) and of TritonServer (the server's backends), marked as this
# process's (`pixdeploy.files.marked_temp_dir`): a serve killed with -9 cannot remove them; the next one does, once
# that PID no longer runs (the server itself dies with its parent: _stop_with_parent).
REPOSITORY_TEMP, SERVER_TEMP = "pixdeploy-repo-", "pixdeploy-triton-"


def _stop_with_parent() -> None:
    """Runs in the server's child process: the kernel sends it SIGTERM when the process that started it
    dies, even by kill -9, so no orphaned server keeps the ports (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def check_port_free(host: str, port: int, option: str) -> None:
    """Refuse a port another program listens on, before starting a server that would fail on it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise PixdeployError(f"port {port} on {host} is not free ({e.strerror or e}); choose another with "
                                 f"{option}") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# How long `TritonServer.stop` waits for Triton to unload its models after SIGTERM before it kills the server's
# process group: with the exit timeout passed to tritonserver, the bound on how long a stopping `serve` takes.
STOP_SECONDS = 30.0

class TritonServer:
    """One `tritonserver` process on a model repository; a context manager that always stops it.

        with TritonServer(repo, http_port=8000, grpc_port=8001) as server:
            server.wait_ready()
            ...
    """

    def __init__(self, repository, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 log=None):
        self.repository = Path(repository)
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.log = log  # a file object for the server's output; None: discarded
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, backends: Path, dist: Path) -> list[str]:
        return [str(dist / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={backends}", f"--cache-directory={dist / 'caches'}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                "--allow-metrics=false", "--allow-gpu-metrics=false", "--exit-on-error=true",
                "--disable-auto-complete-config", "--log-verbose=0",
                "--exit-timeout-secs=5"]  # do not wait 30 s for idle keep-alive clients on shutdown

    def start(self) -> TritonServer:
        if not self.repository.is_dir():
            raise PixdeployError(f"no model repository at {self.repository}")
        for option, port in (("--port", self.http_port), ("--grpc-port", self.grpc_port)):
            check_port_free(self.host, port, option)  # said in one line, not at the end of the server's log
        dist = triton_dist()
        self._workdir = marked_temp_dir(SERVER_TEMP)
        try:
            backends = prepare_backends(dist, self._workdir)
            self.process = subprocess.Popen(self.command(backends, dist), env=server_env(dist),
                                            stdout=self.log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True,  # Ctrl-C reaches us; we stop the server
                                            preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
        except BaseException:
            self._cleanup()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise PixdeployError(f"Triton server on {self.repository} exited (code {code}) before it was "
                                     "ready; its log says why")
            if self.ready():
                return
            time.sleep(0.25)
        raise PixdeployError(f"Triton server on {self.repository} not ready after {timeout:.0f} s")

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM (Triton unloads its models and stops their stub processes), SIGKILL if it hangs."""
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
