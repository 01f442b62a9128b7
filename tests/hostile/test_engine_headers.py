"""Engine headers and engine sets are untrusted input like every file of a bundle.

Each case takes a copy of the tiny bundle with an engine set as `build-engine` records it (headers written by
`write_engine`, plans a marker: no TensorRT here), changes one engine's header and records the file's checksum
again (so only the header's content is wrong), then runs `triton --backend tensorrt` and `inspect`: one
`error:` line naming the engine, exit 1, no repository. The README a good set gets names the engines' TensorRT
and quotes every argument it suggests for the shell."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixdeploy.cli import main

GPU, TRT, CC = "NVIDIA H100 80GB HBM3", "10.8.0.43", "9.0"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return result


@pytest.fixture
def bundle(tiny_bundle, tmp_path, engine_set_writer):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    engine_set_writer(b, gpu=GPU, tensorrt=TRT, cc=CC, max_batch=4)
    return b


def engine_set(b: Path):
    from pixdeploy.runtime.bundle import Bundle

    (s,) = Bundle(b).engine_sets()
    return s


def rewrite(b: Path, graph: str, edit=None, raw: bytes | None = None) -> Path:
    """Change one engine's header (``edit(header)``, or the raw header bytes) and record its checksum again."""
    from pixdeploy.runtime.bundle import add_engine_set
    from pixdeploy.runtime.engine_header import MAGIC, read_engine, write_engine

    s = engine_set(b)
    path = b / s.files[graph]
    header, plan = read_engine(path)
    if raw is not None:
        path.write_bytes(MAGIC + struct.pack("<I", len(raw)) + raw + plan)
    else:
        edit(header)
        write_engine(path, header, plan)
    add_engine_set(b, s, path.parent)
    return path


def set_profile(i, key, value):
    def edit(h):
        h["profiles"][i][key] = value
    return edit


def first_input_batch(n):
    def edit(h):
        shape = next(iter(h["profiles"][0]["shapes"].values()))
        shape[2][0] = n
    return edit


def rename_first_input(h):
    for p in h["profiles"]:
        name = next(iter(p["shapes"]))
        p["shapes"]["not_an_input"] = p["shapes"].pop(name)


def deep_header(b: Path) -> bytes:
    from pixdeploy.runtime.engine_header import read_engine

    header, _ = read_engine(b / engine_set(b).files["decoder"])
    blob = json.dumps(header)
    return (blob[:-1] + ', "settings": ' + "[" * 5000 + "]" * 5000 + "}").encode()


CASES = [
    ("another source graph", lambda h: h.update(source_sha256="0" * 64), r"was not built from this bundle's"),
    ("another TensorRT", lambda h: h.update(tensorrt="10.99.0"), r"its tensorrt is '10\.99\.0', not '10\.8\.0\.43'"),
    ("another GPU", lambda h: h.update(gpu="NVIDIA A100"), r"its gpu is 'NVIDIA A100'"),
    ("another compute capability", lambda h: h.update(compute_capability="8.0"), r"its compute_capability is '8\.0'"),
    ("a precision the variant has not", lambda h: h.update(precision="int8"), r"its precision is 'int8', not 'fp32'"),
    ("negative max batch", lambda h: h.update(max_batch=-1), r"field 'max_batch' is -1, not a batch in 1\.\.65536"),
    ("max batch of another set", lambda h: h.update(max_batch=64), r"its max_batch is 64, not 4"),
    ("profiles []", lambda h: h.update(profiles=[]), r"field 'profiles' is not a list of 1\.\.8"),
    ("profiles 'abc'", lambda h: h.update(profiles="abc"), r"field 'profiles' is not a list"),
    ("profiles [{}]", lambda h: h.update(profiles=[{}]), r"profile 0 is not an object with a name and the shapes"),
    ("profile batch 10**12", first_input_batch(10**12), r"dims in 0\.\.2147483647"),
    ("profile batch 2**31", first_input_batch(2**31), r"dims in 0\.\.2147483647"),
    ("profile batch past the set's", first_input_batch(4096), r"outside the graph's .*batch at most 4"),
    ("an input the graph has not", rename_first_input, r"names inputs \['not_an_input'\] the graph does not have"),
    ("min above max", set_profile(0, "shapes", {"x": [[2], [1], [1]]}), r"min, opt and max are not in order"),
    ("a NaN figure", None, r"holds NaN"),
    ("nested 5000 deep", None, r"nested too deeply|nested deeper than 16"),
    ("a number past 64 bits", None, r"past 64 bits"),
]
RAW = {
    "a NaN figure": lambda b: b'{"format": "pixdeploy-engine", "x": NaN}',
    "nested 5000 deep": deep_header,
    "a number past 64 bits": lambda b: b'{"format": "pixdeploy-engine", "plan_bytes": 99999999999999999999999}',
}


@pytest.mark.parametrize("command", ["triton", "inspect"])
@pytest.mark.parametrize("name, edit, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_engine_header_is_one_line_and_no_repository(bundle, tmp_path, command, name, edit, message):
    import re

    graph = "decoder"
    path = rewrite(bundle, graph, edit, RAW[name](bundle) if name in RAW else None)
    out = tmp_path / "repo"
    args = ["triton", bundle, "-o", out, "--backend", "tensorrt"] if command == "triton" else ["inspect", bundle]
    result = run(*args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(path) in lines[0], lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_triton_runs_the_graph_signature_check_inspect_runs(bundle, tmp_path):
    """Graphs swapped between the manifest's entries (checksums recomputed): inspect refuses the bundle, so
    triton --backend tensorrt must not turn it into a repository."""
    from pixdeploy.export.bundle import write_manifest

    from pixdeploy.config import ModelConfig

    manifest = json.loads((bundle / "manifest.json").read_text())
    enc, dec = bundle / "image_encoder.onnx", bundle / "decoder.onnx"
    enc_bytes, dec_bytes = enc.read_bytes(), dec.read_bytes()
    enc.write_bytes(dec_bytes)
    dec.write_bytes(enc_bytes)
    extra = {"source": manifest["source"], "parity": manifest["variants"]["fp32"]["parity"]}
    write_manifest(bundle, ModelConfig.from_dict(manifest["config"]), extra)
    refused = run("inspect", bundle)
    assert refused.exit_code == 1
    result = run("triton", bundle, "-o", tmp_path / "repo", "--backend", "tensorrt")
    assert result.exit_code == 1 and result.output.startswith("error: "), result.output
    assert "does not match its manifest entry" in result.output
    assert not (tmp_path / "repo").exists()


def test_the_repository_readme_names_the_engines_tensorrt_and_quotes_what_it_suggests(tiny_bundle, tmp_path,
                                                                                        engine_set_writer):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    plugin = "lib$(touch owned);x.so"  # a manifest's plugin name: a file name, but full of shell syntax
    engine_set_writer(b, gpu=GPU, tensorrt=TRT, cc=CC, max_batch=4, plugins=(plugin,))
    result = run("triton", b, "-o", tmp_path / "repo", "--backend", "tensorrt")
    assert result.exit_code == 0, result.output
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert f"TensorRT {TRT}" in readme
    line = next(line for line in readme.splitlines() if "plugins=" in line)
    suggested = line.split(": ", 1)[1]
    # pasted into a real shell, it is one argument, as written, and runs nothing
    import subprocess

    shell = subprocess.run(["sh", "-c", f"printf '%s\\n' {suggested}"], cwd=tmp_path, capture_output=True, text=True)
    assert shell.stdout.splitlines() == [f"--backend-config=tensorrt,plugins=/path/to/{plugin}"], shell
    assert not (tmp_path / "owned").exists()
