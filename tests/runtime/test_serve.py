"""A real Triton server (nvidia-pytriton's tritonserver, Python backend) on loopback, serving a tiny
bundle: answers over HTTP and gRPC equal `Pipeline`'s, concurrent clients get their own answers, bad
requests get one clear error while the server keeps serving, and kill -9 + restart serves the same."""

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.triton

try:
    from pixdeploy.runtime.serve import python_library_dir, triton_dist

    triton_dist()
    python_library_dir()
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except Exception as e:  # noqa: BLE001 - any reason the server cannot run here is a skip reason
    pytest.skip(f"no Triton server here: {str(e).splitlines()[0]}", allow_module_level=True)

from pixdeploy.export.triton import RepositoryOptions, write_repository  # noqa: E402
from pixdeploy.runtime import Pipeline  # noqa: E402
from pixdeploy.runtime.serve import TritonServer, free_port  # noqa: E402


def encoded(arr, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    """Real photographs (scikit-learn's), cropped to 20 different shapes, as JPEG and PNG files."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    return [encoded(photos[i % 2][i * 7 : 200 + i * 3, i * 5 : 300 + i * 7], "JPEG" if i % 2 else "PNG")
            for i in range(20)]


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.load(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    repo = write_repository(tiny_bundle, tmp_path_factory.mktemp("triton") / "repo",
                            RepositoryOptions(backend="python", max_batch=8, instances=2), echo=lambda *_: None)
    log = open(repo.parent / "server.log", "w")
    with TritonServer(repo, http_port=free_port(), grpc_port=free_port(), log=log) as s:
        s.wait_ready(120)
        yield s
    log.close()


def http_generate(url, image: bytes, prompt="", max_new_tokens=12, **options):
    with httpclient.InferenceServerClient(url, network_timeout=60) as c:
        return c.infer("pixdeploy_generate", http_inputs(image, prompt, max_new_tokens, **options)).as_numpy(
            "TEXT")[0, 0].decode("utf-8")


def http_inputs(image, prompt, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0):
    values = [("IMAGE", np.array([[image]], dtype=object), "BYTES"),
              ("PROMPT", np.array([[prompt.encode()]], dtype=object), "BYTES"),
              ("MAX_NEW_TOKENS", np.array([[max_new_tokens]], np.int32), "INT32"),
              ("TEMPERATURE", np.array([[temperature]], np.float32), "FP32"),
              ("TOP_K", np.array([[top_k]], np.int32), "INT32"),
              ("TOP_P", np.array([[top_p]], np.float32), "FP32"),
              ("SEED", np.array([[seed]], np.int64), "INT64")]
    out = []
    for name, arr, dtype in values:
        i = httpclient.InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def grpc_stream(url, image: bytes, prompt="", max_new_tokens=12) -> list[str]:
    """Pieces of text from the decoupled model over a gRPC stream, until its final response."""
    results = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, arr, dtype in (("IMAGE", np.array([image], dtype=object), "BYTES"),
                             ("PROMPT", np.array([prompt.encode()], dtype=object), "BYTES"),
                             ("MAX_NEW_TOKENS", np.array([max_new_tokens], np.int32), "INT32")):
        i = grpcclient.InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("pixdeploy", inputs, enable_empty_final_response=True)
        pieces = []
        while True:
            result, error = results.get(timeout=60)
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return pieces
            pieces.append(result.as_numpy("TEXT")[0].decode("utf-8"))
    finally:
        client.stop_stream()
        client.close()


def test_http_and_grpc_answers_equal_the_pipeline(server, pipe, images):
    for image, prompt in ((images[0], ""), (images[1], "the number"), (images[4], "a photo of")):
        want = pipe.generate(image, prompt, max_new_tokens=12)
        assert http_generate(server.http_url, image, prompt) == want
        pieces = grpc_stream(server.grpc_url, image, prompt)
        assert pieces == list(pipe.stream(image, prompt, max_new_tokens=12))
        assert "".join(pieces) == want
    sampled = dict(max_new_tokens=10, temperature=0.9, top_k=20, top_p=0.9, seed=5)
    assert http_generate(server.http_url, images[2], "", **sampled) == pipe.generate(images[2], "", **sampled)


def test_readme_client_example_runs(server, pipe, images, tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```py\n(.*?)```", readme, flags=re.S) if "tritonclient" in b]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(images[1])
    exec(compile(code.replace("127.0.0.1:8000", server.http_url), "README.md", "exec"), {})
    assert capsys.readouterr().out == pipe.generate(images[1]) + "\n"


def test_concurrent_clients_get_their_own_answers(server, pipe, images):
    """16 clients x 20 requests, mixed images, prompts and lengths, batched by the server."""
    prompts = ["", "the number", "a photo of"]
    # Lengths follow the image, so 60 distinct jobs cover all 320 requests (the expected answers are
    # computed here, one by one, with the Pipeline).
    jobs = [(images[(c + r) % 20], prompts[(c * r) % 3], 1 + (c + r) % 3) for c in range(16) for r in range(20)]
    want = {job: pipe.generate(job[0], job[1], max_new_tokens=job[2]) for job in set(jobs)}

    def client(c):
        with httpclient.InferenceServerClient(server.http_url, network_timeout=120) as conn:
            return [(job, conn.infer("pixdeploy_generate", http_inputs(*job)).as_numpy("TEXT")[0, 0].decode())
                    for job in jobs[c * 20 : (c + 1) * 20]]

    with ThreadPoolExecutor(16) as pool:
        got = [answer for answers in pool.map(client, range(16)) for answer in answers]
    assert len(got) == 320
    wrong = [(job[1:], text, want[job]) for job, text in got if text != want[job]]
    assert not wrong, wrong[:3]
    assert len(set(want.values())) > 5  # the answers differ, so a crossed answer would show


def test_bad_requests_get_one_clear_error_and_the_server_keeps_serving(server, pipe, images):
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 megapixels in a few kilobytes
    cases = {
        b"": "image data is empty",
        b"not an image at all": "cannot read image",
        images[0][: len(images[0]) // 3]: "cannot read image",
        bomb.getvalue(): "possible decompression bomb",
    }
    with httpclient.InferenceServerClient(server.http_url, network_timeout=60) as c:
        for data, message in cases.items():
            with pytest.raises(InferenceServerException, match=message):
                c.infer("pixdeploy_generate", http_inputs(data, "", 4))
        with pytest.raises(InferenceServerException, match="shorten the prompt"):
            c.infer("pixdeploy_generate", http_inputs(images[0], "the number " * 40, 4))
        with pytest.raises(InferenceServerException, match="TEMPERATURE must be a finite"):
            c.infer("pixdeploy_generate", http_inputs(images[0], "", 4, temperature=float("nan")))
        wrong_dtype = httpclient.InferInput("IMAGE", [1, 3], "FP32")
        wrong_dtype.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException, match="data-type"):
            c.infer("pixdeploy_generate", [wrong_dtype])
        with pytest.raises(InferenceServerException, match="image data is empty"):
            grpc_stream(server.grpc_url, b"")
    assert http_generate(server.http_url, images[3]) == pipe.generate(images[3], max_new_tokens=12)


class Served:
    """`pixdeploy serve` as a user runs it in a terminal: its stderr (the server's log too) is read as it
    comes, so a chatty server never blocks on a full pipe; stdout is read for the "ready:" line."""

    def __init__(self, cmd, url):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with httpclient.InferenceServerClient(url) as c:
                    if c.is_server_ready():
                        # serve polls readiness on its own; wait for its "ready:" line (what a user waits
                        # for), or a kill right now races it and serve rightly says "exited before ready"
                        assert self.proc.stdout.readline().startswith("ready:"), self.log()
                        self.config = c.get_model_config("pixdeploy_generate")
                        return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.3)
        self.proc.kill()
        raise AssertionError("pixdeploy serve not ready in 120 s")

    def log(self) -> str:
        return "".join(self.lines)[-3000:]

    def server_pid(self) -> int:
        children = open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split()
        assert len(children) == 1
        return int(children[0])

    def wait(self, timeout) -> int | str:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return f"still running after {timeout} s; its log ends: {self.log()}"
        self.reader.join(10)  # the log to its end (the server's stub processes may write last)
        return code


def test_kill_9_and_restart_serve_the_same(tiny_bundle, tmp_path, pipe, images):
    """`pixdeploy serve` with a kept repository: its server killed with -9, then `serve` itself killed
    with -9 (its server must not outlive it); each restart reuses the repository and answers the same."""
    repo = tmp_path / "repo"
    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "pixdeploy.cli", "serve", str(tiny_bundle), "--port", str(http_port),
           "--grpc-port", str(grpc_port), "--repository", str(repo), "--instances", "1"]
    url = f"127.0.0.1:{http_port}"

    first = Served(cmd, url)
    try:
        configs = {f: (repo / f).read_bytes() for f in ("pixdeploy_repository.json", "decoder/config.pbtxt")}
        assert http_generate(url, images[5]) == pipe.generate(images[5], max_new_tokens=12)
        os.kill(first.server_pid(), signal.SIGKILL)
        assert first.wait(30) == 1
        assert "Triton server exited unexpectedly" in first.log()
    finally:
        first.proc.kill()

    second = Served(cmd, url)
    try:
        assert "reusing model repository" in "".join(second.lines[:2])
        assert second.config == first.config
        assert {f: (repo / f).read_bytes() for f in configs} == configs
        assert http_generate(url, images[6]) == pipe.generate(images[6], max_new_tokens=12)
        tritonserver = second.server_pid()
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(10)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{tritonserver}") and time.monotonic() < deadline:
            if open(f"/proc/{tritonserver}/stat").read().split()[2] == "Z":
                break
            time.sleep(0.2)
        assert time.monotonic() < deadline, "the server outlived its killed parent"
    finally:
        second.proc.kill()

    third = Served(cmd, url)  # the ports are free again
    try:
        assert third.config == first.config
        assert http_generate(url, images[7]) == pipe.generate(images[7], max_new_tokens=12)
    finally:
        third.proc.send_signal(signal.SIGINT)
        # serve waits STOP_SECONDS for Triton to stop, then kills it: the bound, twice over for a loaded machine
        from pixdeploy.runtime.serve import STOP_SECONDS

        assert third.wait(2 * STOP_SECONDS + 30) == 130
        assert "stopping Triton" in third.log()


def test_serve_refuses_a_busy_port_and_a_foreign_repository_in_one_line(tiny_bundle, tmp_path):
    """Before any server starts: a port in use is named, and a --repository that is not one is not offered a
    --force that serve does not have."""
    import socket

    from click.testing import CliRunner

    from pixdeploy.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(main, ["serve", str(tiny_bundle), "--port", str(port)])
    assert res.exit_code == 1 and f"port {port} on 127.0.0.1 is not free" in res.output and "--port" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    (tmp_path / "mine").mkdir()
    res = CliRunner().invoke(main, ["serve", str(tiny_bundle), "--repository", str(tmp_path / "mine")])
    assert res.exit_code == 1 and "is not a pixdeploy model repository" in res.output and "--force" not in res.output
