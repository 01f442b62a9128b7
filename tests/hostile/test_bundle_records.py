"""Every typed record of the bundle format, over the hostile-JSON corpus: `R.from_dict(r.to_dict()) == r` for every
record read, and anything else refused with one `RecordError`, never another exception. Real records (from an
exported bundle, a quantized variant and an engine set) are fuzzed field by field, and any JSON value stands in
for a whole record."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pixdeploy.runtime.bundle import (
    CachePair,
    CalibrationRecord,
    CpuSchemeRecord,
    EngineSet,
    FileEntry,
    GraphSignature,
    ParityRecord,
    RecordError,
    SourceRecord,
    TensorSpec,
    VariantRecord,
)
from pixdeploy.runtime.bundle.records import RECORDS
from test_json_readers import DELETE, FUZZ, paths, replaced, values

SHA = "ab" * 32
RATIOS = {"encoder": {"p50": 1.5, "p90": 1.4, "p99": 1.2}, "decoder_step": {"p50": 2.0, "p90": 1.9, "p99": 1.7},
          "score": 1.73}
EXAMPLES = {  # one real record of each kind, in its manifest form
    TensorSpec: {"dtype": "float32", "shape": ["batch", 4, 64, 24]},
    CachePair: {"past": "past_k_0", "present": "present_k_0", "dtype": "float32", "shape": ["batch", 2, 64, 24]},
    ParityRecord: {"precision": "int8", "passed": True, "checks": {"embed_cosine_min": 0.998, "greedy_match": 1}},
    CalibrationRecord: {"images": 64, "source": "/data/calib"},
    CpuSchemeRecord: {"scheme": "dynamic", "isa": "avx512-vnni", "ratios_vs_fp32": {"dynamic": RATIOS},
                      "rejected_by_parity": {"static-u8s8-qdq": "logits_cosine_min=0.9"}, "measured": "interleaved"},
    VariantRecord: {"precision": "int8", "target": "cpu", "method": "dynamic int8",
                    "graphs": {"image_encoder": {"file": "variants/int8-cpu-1a2b3c4d/image_encoder.onnx"},
                               "decoder": {"file": "variants/int8-cpu-1a2b3c4d/decoder.onnx"}},
                    "parity": {"passed": True, "checks": {"logits_cosine_min": 0.995}}, "seconds": 12.5,
                    "calibration": {"images": 8, "source": "digits"},
                    "cpu_scheme": {"scheme": "dynamic", "isa": "avx2", "ratios_vs_fp32": {"dynamic": RATIOS}},
                    "decoder_form": "fused-gqa-v1"},
    FileEntry: {"sha256": SHA, "bytes": 1234},
    SourceRecord: {"checkpoint": "/runs/a/checkpoint", "checkpoint_step": 800},
}
ENGINE_SET = {"variant": "fp32", "tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7",
              "export_profile": "tensorrt-10.3", "max_batch": 4, "version_compatible": False,
              "plugins": ["libwindow.so"], "files": {"decoder": "engines/orin-trt10.3.0.30-fp32/decoder.engine"}}


def readers(tiny_manifest: dict) -> dict:
    """Every record's reader, each with a real document to start from (the graph signatures: a real bundle's)."""
    out = {cls.__name__: (cls.from_dict, doc) for cls, doc in EXAMPLES.items()}
    out["GraphSignature"] = (GraphSignature.from_dict, tiny_manifest["graphs"]["decoder"])
    out["fp32 VariantRecord"] = (VariantRecord.from_dict, tiny_manifest["variants"]["fp32"])
    out["EngineSet"] = (lambda d: EngineSet.from_dict("orin-trt10.3.0.30-fp32", d), ENGINE_SET)
    return out


@pytest.fixture(scope="module")
def tiny_manifest(tiny_bundle):
    return json.loads((tiny_bundle / "manifest.json").read_text())


def read_or_refuse(read, doc):
    """``read(doc)``: a record that survives its own round trip, through JSON too, or one RecordError."""
    try:
        record = read(doc)
    except RecordError as e:
        assert str(e) and "\n" not in str(e)
        return None
    again = json.loads(json.dumps(record.to_dict(), allow_nan=False))  # what the writer would put on disk
    assert type(record).from_dict(again) == record if not isinstance(record, EngineSet) else \
        EngineSet.from_dict(record.name, again) == record
    return record


def test_every_record_of_the_format_is_covered(tiny_manifest):
    covered = {name.split()[-1] for name in readers(tiny_manifest)}
    assert {cls.__name__ for cls in RECORDS} | {"EngineSet"} <= covered


def test_every_real_record_round_trips(tiny_manifest):
    for name, (read, doc) in readers(tiny_manifest).items():
        record = read(doc)
        assert read_or_refuse(read, doc) == record, name
        assert record.to_dict() == read(record.to_dict()).to_dict(), name


@FUZZ
@given(data=st.data())
def test_a_real_record_with_any_field_replaced_round_trips_or_is_refused(tiny_manifest, data):
    name, (read, doc) = data.draw(st.sampled_from(sorted(readers(tiny_manifest).items())))
    where = data.draw(st.sampled_from(list(paths(doc))))
    value = data.draw(st.just(DELETE) | values)
    read_or_refuse(read, replaced(doc, where, value))


@FUZZ
@given(data=st.data(), doc=values)
def test_any_json_value_as_a_record_round_trips_or_is_refused(tiny_manifest, data, doc):
    name, (read, _) = data.draw(st.sampled_from(sorted(readers(tiny_manifest).items())))
    read_or_refuse(read, doc)


@pytest.mark.parametrize("record, doc, message", [
    (TensorSpec, {"dtype": "float128", "shape": [1]}, "dtype is 'float128', not one of float32"),
    (TensorSpec, {"dtype": "float32", "shape": [10 ** 15]}, r"shape\[0\] is 1000000000000000, not an integer"),
    (TensorSpec, {"dtype": "float32", "shape": [1] * 9}, "not a list of at most 8 dims"),
    (CachePair, {"past": "a", "present": "b", "dtype": "float32"}, "has no 'shape'"),
    (ParityRecord, {"passed": "yes"}, "passed is 'yes', not true or false"),
    (ParityRecord, {"passed": True, "checks": {"x": float("nan")}}, "checks.x is nan, not a finite number"),
    (VariantRecord, {**EXAMPLES[VariantRecord], "secret": 1}, "unknown field 'secret'"),
    (FileEntry, {"sha256": "00"}, "not a sha256 in hex"),
    (CalibrationRecord, {"images": True, "source": ""}, "images is True, not an integer"),
])
def test_a_refusal_says_which_field_and_what_is_wrong(record, doc, message):
    with pytest.raises(RecordError, match=message):
        record.from_dict(doc)
