"""Every JSON file a user can hand pixdeploy, fuzzed: a checkpoint's meta.json, a calibration cache, a
`bench --compare` report. Documents of every shape (any JSON value, NaN and Infinity figures, numbers past
a float or 64 bits, nesting past the parser's recursion limit, bytes that are not UTF-8) and real
documents with one field replaced or removed. Each reader must either accept the document, and then work
on it, or refuse it with exactly one `PixdeployError`; through the command line, with one `error:` line
naming the file, a non-zero exit and no traceback.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixdeploy.checkpoint import Checkpoint
from pixdeploy.cli import main
from pixdeploy.errors import PixdeployError
from pixdeploy.files import sha256
from pixdeploy.jsonfile import BadJson, inside, loads

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_CLI = settings(FUZZ, max_examples=40)  # each example runs a command

# ---- documents ------------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**400, 10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=24)


def dumped(value) -> bytes:
    return json.dumps(value).encode()  # Python writes NaN and Infinity literals, as a careless writer does


def nested(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


raw_documents = st.one_of(
    values.map(dumped),
    st.binary(max_size=64),
    st.integers(1, 200_000).map(lambda n: nested(n, b"[", b"]")),
    st.integers(1, 50_000).map(lambda n: nested(n, b'{"a":', b"}")[:-n] + b"1" + b"}" * n),
    st.sampled_from([b"NaN", b"-Infinity", b"[1e999]", b'{"a": -1e400}', b"1" * 5000, b"9" * 20,
                     b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'"\\ud800"', b"{}" * 2, b""]),
)

DELETE = object()


def paths(doc, prefix=()):
    """Every place in a document: (keys and indices from the root)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


def replaced(doc, where: tuple, value):
    if not where:
        return doc if value is DELETE else value
    out = json.loads(json.dumps(doc))
    parent = out
    for key in where[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    return out


def mutations(base) -> st.SearchStrategy[bytes]:
    """``base`` with one place replaced by any value (a NaN, a string, a nested list, ...) or removed."""
    places = list(paths(base))
    return st.tuples(st.sampled_from(places), st.one_of(values, st.just(DELETE))).map(
        lambda t: dumped(replaced(base, *t)))


def refused_in_one_line(result, path: Path) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(path) in lines[0], lines[0]


# ---- the strict parser itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc, reason", [
    (b"NaN", "holds NaN"), (b'{"p50_ms": Infinity}', "holds Infinity"), (b"[1e999]", "past what a float holds"),
    (b"1" * 5000, "past 64 bits"), (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"\xff{}", "not UTF-8 text (byte 0xff at offset 0)"), (b"{", "not JSON"), (b"", "not JSON"),
])
def test_the_parser_refuses_what_json_has_no_word_for(doc, reason):
    with pytest.raises(BadJson, match=reason.replace("(", r"\(").replace(")", r"\)")):
        loads(doc)
    assert loads(b'{"a": [1, -2.5e3, 9223372036854775807, null, true, "\\u00e9"]}') == \
        {"a": [1, -2500.0, 9223372036854775807, None, True, "é"]}


# ---- checkpoint meta.json -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_copy(tiny_checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(tiny_checkpoint, run)
    ck = run / "checkpoint"
    return ck, json.loads((ck / "meta.json").read_text())


@FUZZ
@given(doc=raw_documents)
def test_checkpoint_refuses_any_meta_json(checkpoint_copy, doc):
    ck, _ = checkpoint_copy
    (ck / "meta.json").write_bytes(doc)
    with pytest.raises(PixdeployError, match=str(ck)):
        Checkpoint(ck)


@FUZZ
@given(data=st.data())
def test_checkpoint_meta_json_with_one_field_changed_loads_or_is_refused(checkpoint_copy, data):
    ck, meta = checkpoint_copy
    (ck / "meta.json").write_bytes(data.draw(mutations(meta)))
    try:
        loaded = Checkpoint(ck)
    except PixdeployError as e:
        assert str(ck) in str(e)
        return
    assert loaded.config.validate() and isinstance(loaded.step, int) and loaded.step >= 0
    assert all((ck / name).resolve().parent == ck.resolve() for name in loaded.meta["files"])


@FUZZ_CLI
@given(doc=raw_documents)
def test_export_refuses_any_meta_json_in_one_line(checkpoint_copy, doc):
    ck, _ = checkpoint_copy
    (ck / "meta.json").write_bytes(doc)
    out = ck.parent.parent / "never"
    result = CliRunner().invoke(main, ["export", str(ck), "-o", str(out)])
    refused_in_one_line(result, ck)
    assert not out.exists()


# ---- checkpoint files outside the checkpoint --------------------------------------------------------------


def relisted(ck: Path, meta: dict, **files) -> None:
    meta = json.loads(json.dumps(meta))
    meta["files"].update(files)
    (ck / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/hostname", "sub/../../secret.safetensors",
                                  "./model.safetensors", "a\\..\\..\\b", "nul\0byte", "\ud800", ""])
def test_checkpoint_refuses_a_file_named_outside_it_before_opening_anything(checkpoint_copy, name, monkeypatch):
    ck, meta = checkpoint_copy
    (ck.parent / "secret.safetensors").write_bytes(b"not the checkpoint's")  # what ../ would reach
    relisted(ck, meta, **{name: "0" * 64})
    opened = []
    monkeypatch.setattr("pixdeploy.checkpoint.sha256", lambda p: opened.append(p) or sha256(p))
    with pytest.raises(PixdeployError, match=f"damaged checkpoint {ck}: meta.json names .*"):
        Checkpoint(ck)
    assert opened == []


def test_checkpoint_refuses_a_symlink_on_the_way_out(checkpoint_copy, tmp_path):
    """A listed file that is a symlink (even with the right checksum), or lies under a symlinked folder,
    is refused: checksums say what the bytes are, not where they come from."""
    ck, meta = checkpoint_copy
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "tokenizer.json").write_bytes((ck / "tokenizer.json").read_bytes())
    for link, target, name in (("tok-link.json", outside / "tokenizer.json", "tok-link.json"),
                               ("linked-dir", outside, "linked-dir/tokenizer.json")):
        (ck / link).symlink_to(target)
        try:
            relisted(ck, meta, **{name: sha256(outside / "tokenizer.json")})
            with pytest.raises(PixdeployError, match="symlink"):
                Checkpoint(ck)
        finally:
            (ck / link).unlink()
    (ck / "meta.json").write_text(json.dumps(meta))
    assert Checkpoint(ck).step == meta["step"]


def test_checkpoint_refuses_its_weights_as_a_symlink(checkpoint_copy, tmp_path):
    ck, meta = checkpoint_copy
    weights = ck / "model.safetensors"
    moved = tmp_path / "model.safetensors"
    shutil.move(weights, moved)
    weights.symlink_to(moved)
    try:
        with pytest.raises(PixdeployError, match="model.safetensors.* symlink"):
            Checkpoint(ck)
    finally:
        weights.unlink()
        shutil.move(moved, weights)


def test_inside_keeps_plain_names():
    assert inside(Path("/nonexistent/ck"), "model.safetensors") == Path("/nonexistent/ck/model.safetensors")
    assert inside(Path("/nonexistent/ck"), "sub/x.json") == Path("/nonexistent/ck/sub/x.json")
    for bad in ("..", "a/../b", "/x", "a//b", 3, None):
        with pytest.raises(BadJson):
            inside(Path("/nonexistent/ck"), bad)


# ---- calibration cache ----------------------------------------------------------------------------------

GRAPH_SHA = {"image_encoder": "a" * 64, "decoder": "b" * 64}


def calibration_cache() -> dict:
    """A cache as `CalibrationCache.save` writes it (ranges as onnxruntime's cache encoder writes them)."""
    def array(v):
        return {"data": [v], "dtype": "float32", "CLS": "numpy.array"}

    def ranges(names):
        return {"CLS": "TensorsData", "calibration_method": {"CLS": "CalibrationMethod",
                                                            "value": "CalibrationMethod.MinMax"},
                "data": {n: {"lowest": array(-1.5), "highest": array(2.25), "CLS": "TensorData"} for n in names}}

    return {"format": "pixdeploy-calibration", "version": 1, "images": 12, "source": "digits",
            "graphs": {"image_encoder": {"sha256": GRAPH_SHA["image_encoder"], "ranges": ranges(["mul_1", "lin"])},
                       "decoder": {"sha256": GRAPH_SHA["decoder"], "ranges": ranges(["linear_3"])}}}


@FUZZ
@given(doc=raw_documents)
def test_calibration_cache_refuses_any_document(tmp_path_factory, doc):
    from pixdeploy.export.calibration import CalibrationCache

    path = tmp_path_factory.mktemp("calib") / "calib.json"
    path.write_bytes(doc)
    with pytest.raises(PixdeployError, match=str(path)):
        CalibrationCache.load(path, GRAPH_SHA)


@FUZZ
@given(doc=mutations(calibration_cache()))
def test_a_calibration_cache_it_accepts_onnxruntime_reads(tmp_path_factory, doc):
    from onnxruntime.quantization.calibrate import load_tensors_data
    from pixdeploy.export.calibration import CalibrationCache

    folder = tmp_path_factory.mktemp("calib")
    (folder / "calib.json").write_bytes(doc)
    try:
        cache = CalibrationCache.load(folder / "calib.json", GRAPH_SHA)
    except PixdeployError as e:
        assert str(folder / "calib.json") in str(e)
        return
    assert isinstance(cache.images, int) and isinstance(cache.source, str)
    for graph in GRAPH_SHA:
        ranges = load_tensors_data(cache.ort_cache_file(graph, folder))
        for name in ranges:
            low, high = ranges[name].range_value
            assert math.isfinite(float(low.min())) and math.isfinite(float(high.max())) and (low <= high).all()


@pytest.mark.parametrize("doc", [b"[" * 100_000 + b"]" * 100_000,
                                 b'{"format": "pixdeploy-calibration", "version": 1, "images": NaN}',
                                 b"\xff\xfe{}", b"[]"], ids=["deep", "nan", "utf16", "list"])
def test_quantize_refuses_a_bad_calibration_cache_in_one_error_line(tiny_bundle, tmp_path, doc):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (tmp_path / "calib.json").write_bytes(doc)
    result = CliRunner().invoke(main, ["quantize", str(bundle), "--precision", "int8", "--target", "tensorrt",
                                       "--calib-cache", str(tmp_path / "calib.json")])
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), repr(result.exception)
    last = result.output.strip().splitlines()[-1]  # after quantize's line saying what it makes
    assert result.exit_code == 1 and last.startswith("error: ") and str(tmp_path / "calib.json") in last, result.output
    def entries(folder):  # files and folders: not even an empty variants/ is left behind
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))

    assert entries(bundle) == entries(tiny_bundle)


# ---- bench --compare reports ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_report(tiny_bundle, tiny_checkpoint) -> dict:
    from pixdeploy.runtime.bench import BenchOptions, run_bench

    from pixdeploy.eager_baseline import eager_baseline

    return run_bench(tiny_bundle, BenchOptions(stages=("encoder",), batches=(1,), iters=5, warmup=1),
                     baseline=eager_baseline(tiny_checkpoint))


@FUZZ
@given(doc=raw_documents)
def test_bench_report_reader_refuses_any_document(tmp_path_factory, doc):
    from pixdeploy.runtime.bench import read_report

    path = tmp_path_factory.mktemp("bench") / "old.json"
    path.write_bytes(doc)
    with pytest.raises(PixdeployError, match=str(path)):
        read_report(path)


@FUZZ
@given(data=st.data())
def test_a_bench_report_it_accepts_compares(bench_report, tmp_path_factory, data):
    from pixdeploy.runtime.bench import compare, compare_table, read_report

    path = tmp_path_factory.mktemp("bench") / "old.json"
    path.write_bytes(data.draw(mutations(bench_report)))
    try:
        old = read_report(path)
    except PixdeployError as e:
        assert str(path) in str(e)
        return
    changes = compare(bench_report, old, 0.2)
    assert all(math.isfinite(c.old) and c.old > 0 and isinstance(c.regressed, bool) for c in changes)
    compare_table(changes, bench_report, old)


def test_bench_compare_with_nan_figures_fails(bench_report, tmp_path):
    """A NaN baseline passes every `>` comparison: it must be refused, not compared."""
    from pixdeploy.runtime.bench import compare

    old = json.loads(json.dumps(bench_report))
    for row in old["rows"]:
        row["p50_ms"] = float("nan")
    with pytest.raises(PixdeployError, match="p50_ms"):
        compare(bench_report, old, 0.2)
    (tmp_path / "nan.json").write_text(json.dumps(old))  # written as NaN literals
    result = CliRunner().invoke(main, ["bench", str(bench_report["bundle"]["path"]), "--stage", "encoder",
                                       "--batch", "1", "--iters", "5", "--compare", str(tmp_path / "nan.json")])
    refused_in_one_line(result, tmp_path / "nan.json")
    assert "NaN" in result.output


@FUZZ_CLI
@given(doc=raw_documents)
def test_bench_compare_refuses_any_document_in_one_line(tiny_bundle, tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("bench") / "old.json"
    path.write_bytes(doc)
    result = CliRunner().invoke(main, ["bench", str(tiny_bundle), "--stage", "encoder", "--batch", "1",
                                       "--iters", "5", "--compare", str(path)])
    refused_in_one_line(result, path)


def test_bench_compare_prints_the_other_machine_escaped(bench_report, tmp_path):
    old = json.loads(json.dumps(bench_report))
    old["machine"]["cpu"] = "\x1b]0;owned\x07Fake CPU"
    old["created"] = "\x1b[2J2020-01-01"
    old["libraries"]["onnxruntime"] = "1.0\x1b[H"
    (tmp_path / "old.json").write_text(json.dumps(old))
    result = CliRunner().invoke(main, ["bench", str(bench_report["bundle"]["path"]), "--stage", "encoder",
                                       "--batch", "1", "--iters", "5", "--compare", str(tmp_path / "old.json")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "before: \\x1b]0;owned\\x07Fake CPU" in result.output and "(\\x1b[2J2020-01-01)" in result.output
    assert "library versions differ: onnxruntime 1.0\\x1b[H -> " in result.output


# ---- a run's metrics.jsonl (read back by train --resume) --------------------------------------------------

RECORD = {"step": 2, "loss": 1.25, "eval_pixel_loss": 1.5, "eval_word_loss": 2.0, "pixel_tokens_per_s": 900.0}


@FUZZ
@given(lines=st.lists(st.one_of(raw_documents, mutations(RECORD)), max_size=4))
def test_metrics_reader_keeps_only_records_it_can_show(tmp_path_factory, lines):
    from pixdeploy.training import METRIC_FIGURES, read_metrics

    path = tmp_path_factory.mktemp("run") / "metrics.jsonl"
    path.write_bytes(b"\n".join([*lines, dumped(RECORD)]))
    records = read_metrics(path)
    assert records[-1] == RECORD
    for r in records:
        assert isinstance(r, dict) and isinstance(r.get("step", 0), int) and r.get("step", 0) >= 0
        for k in METRIC_FIGURES:
            assert math.isfinite(r.get(k, 0.0)) and f"{r.get(k, 0.0):.4f}"  # as `train` prints a summary


# ---- a bundle's manifest.json, its parity.json and its engine sets -----------------------------------------


@pytest.fixture(scope="module")
def bundle_copy(tiny_bundle, tmp_path_factory) -> tuple[Path, dict]:
    b = tmp_path_factory.mktemp("fuzz-bundle") / "bundle"
    shutil.copytree(tiny_bundle, b)
    return b, json.loads((b / "manifest.json").read_text())


@FUZZ
@given(doc=raw_documents)
def test_a_bundle_refuses_any_manifest(bundle_copy, doc):
    from pixdeploy.runtime import Bundle

    b, _ = bundle_copy
    (b / "manifest.json").write_bytes(doc)
    with pytest.raises(PixdeployError, match=str(b)):
        Bundle(b)


@FUZZ
@given(data=st.data())
def test_a_manifest_with_one_field_changed_loads_or_is_refused(bundle_copy, data):
    """Every field, the engine sets and the cache pairs included: accepted only if every path it names lies in the
    bundle and every reader of the result works."""
    from pixdeploy.export.profiles import get_profile
    from pixdeploy.runtime import Bundle

    b, manifest = bundle_copy
    manifest = {**manifest, "engines": {"orin-trt10.3.0.30-fp32": {
        "variant": "fp32", "tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7",
        "export_profile": "tensorrt-10.3", "max_batch": 2, "files": {}}}}
    (b / "manifest.json").write_bytes(data.draw(mutations(manifest)))
    try:
        loaded = Bundle(b)
        for variant in loaded.variants:
            for graph in ("image_encoder", "decoder"):
                assert loaded.graph_path(graph, variant).resolve().is_relative_to(b.resolve())
        loaded.cache_pairs(), loaded.engine_sets(), loaded.parity_report(), get_profile(loaded.export_target)
    except PixdeployError as e:
        assert str(b) in str(e) or "export target" in str(e)
    finally:
        (b / "manifest.json").write_text(json.dumps(manifest))


@FUZZ_CLI
@given(doc=raw_documents)
def test_inspect_refuses_any_manifest_in_one_line(bundle_copy, doc):
    b, manifest = bundle_copy
    (b / "manifest.json").write_bytes(doc)
    try:
        refused_in_one_line(CliRunner().invoke(main, ["inspect", str(b)]), b)
    finally:
        (b / "manifest.json").write_text(json.dumps(manifest))


@FUZZ
@given(doc=raw_documents)
def test_a_bundle_refuses_any_parity_record(bundle_copy, doc):
    """parity.json with its checksum recomputed: read, or refused in one line, never a traceback."""
    from pixdeploy.runtime import Bundle

    b, manifest = bundle_copy
    original = (b / "parity.json").read_bytes()
    (b / "parity.json").write_bytes(doc)
    edited = json.loads(json.dumps(manifest))
    edited["files"]["parity.json"]["sha256"] = sha256(b / "parity.json")
    (b / "manifest.json").write_text(json.dumps(edited))
    try:
        record = Bundle(b).parity_report()
        assert isinstance(record.passed, bool) and all(math.isfinite(v) for _, v in record.checks)
    except PixdeployError as e:
        assert str(b) in str(e)
    finally:
        (b / "parity.json").write_bytes(original)
        (b / "manifest.json").write_text(json.dumps(manifest))
