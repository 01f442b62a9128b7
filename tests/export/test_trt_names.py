"""Every TensorRT Python name pixdeploy uses exists in each TensorRT version it claims (10.3, 10.15, 11.x).

The names each version has are recorded in export/trt_names.json, read from NVIDIA's bindings wheels by
scripts/trt_names.py (no TensorRT and no network needed here). The names pixdeploy uses are found by
reading its source: ``trt.X``, ``trt.X.Y``, ``getattr(trt.X, name)`` with the names the option tables and
`build_settings` can produce, and the methods called on TensorRT objects. A new use that the recorded table
cannot vouch for fails here; record it by adding its class or enum to the script and running it again.
"""

import ast
import json
from pathlib import Path

import pytest
from pixdeploy.export.engine import build_settings
from pixdeploy.export.trt_support import BUILDER_FLAGS, NETWORK_FLAGS, PARSER_FLAGS, TACTIC_SOURCES, parser_table
from pixdeploy.runtime.engine_header import version_tuple

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads((ROOT / "export" / "trt_names.json").read_text(encoding="utf-8"))
VERSIONS = TABLE["versions"]
# The files that import tensorrt (checked below, so a new one must be added here).
SOURCES = ["export/engine.py", "runtime/tensorrt_backend.py"]
ROOTS = {"trt", "self.trt"}  # how those files name the tensorrt module
# Variables those files hold TensorRT objects in -> the class.
RECEIVERS = {"runtime": "Runtime", "self.runtime": "Runtime", "engine": "ICudaEngine", "self.engine": "ICudaEngine",
             "self.context": "IExecutionContext", "inspector": "EngineInspector", "network": "INetworkDefinition",
             "lay": "ILayer", "self.logger": "Logger", "registry": "IPluginRegistry"}
PACKAGE_NAMES = {"__version__"}  # set by the wheel's tensorrt/__init__.py (the script records it as the key)


def option_names(enum: str, version: str) -> set:
    """What `build_settings` can ask of ``enum`` by name on TensorRT ``version``, over every option."""
    out = set()
    for options in ({}, {"plugins": True, "version_compatible": True, "workspace": 1 << 30}):
        s = build_settings(version, **options)
        out |= {"OnnxParserFlag": set(s.parser_flags), "BuilderFlag": set(s.builder_flags),
                "NetworkDefinitionCreationFlag": set(s.network_flags),
                "ProfilingVerbosity": {s.config["profiling_verbosity"]}}[enum]
    return out


# getattr(trt.<enum>, <computed name>) where the name comes from BuildSettings: resolved per version.
COMPUTED = {"OnnxParserFlag", "BuilderFlag", "NetworkDefinitionCreationFlag", "ProfilingVerbosity"}


def uses(source: str) -> list:
    """(kind, owner, names, where) for every TensorRT name in ``source``. kind: "all" (each name must exist),
    "any" (a hasattr-guarded lookup: one of them must) or "computed" (the names `build_settings` gives)."""
    tree = ast.parse(source)
    tuples = {}  # name = ("A", "B") literal tuples, for getattr over them
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) \
                and all(isinstance(e, ast.Constant) for e in node.value.elts):
            tuples[node.targets[0].id] = {e.value for e in node.value.elts}
    loops = {}  # comprehension variable -> the literal tuple it runs over
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension) and isinstance(node.target, ast.Name) \
                and isinstance(node.iter, ast.Name) and node.iter.id in tuples:
            loops[node.target.id] = tuples[node.iter.id]
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            target = ast.unparse(node.args[0])
            owner = next((target.split(".")[-1] for r in ROOTS if target == f"{r}.{target.split('.')[-1]}"), None)
            if owner is None:
                continue
            name = node.args[1]
            if isinstance(name, ast.Constant):
                found.append(("all", owner, {name.value}, where))
            elif isinstance(name, ast.Name) and name.id in loops:
                found.append(("any", owner, loops[name.id], where))  # guarded by hasattr over the same tuple
            elif owner in COMPUTED:
                found.append(("computed", owner, set(), where))
            else:
                found.append(("unresolved", owner, {ast.unparse(name)}, where))
        elif isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            if base in ROOTS:
                found.append(("all", "module", {node.attr}, where))
            elif any(base == f"{r}.{base.split('.')[-1]}" for r in ROOTS):
                found.append(("all", base.split(".")[-1], {node.attr}, where))
            elif base in RECEIVERS:
                found.append(("all", RECEIVERS[base], {node.attr}, where))
    return found


def missing(found: list, version: str) -> list:
    """The uses TensorRT ``version``'s entry of the table cannot vouch for."""
    names = VERSIONS[version]
    out = []
    for kind, owner, wanted, where in found:
        if kind == "computed":
            kind, wanted = "all", option_names(owner, version)
        if kind == "unresolved":
            out.append(f"{where}: getattr(trt.{owner}, {wanted.pop()}) has no known set of names")
            continue
        if owner == "module":
            have = set(names["module"]) | PACKAGE_NAMES
        elif owner in names["enums"]:
            have = set(names["enums"][owner])
        elif owner in names["classes"]:
            have = set(names["classes"][owner])
        else:
            out.append(f"{where}: trt.{owner} is not recorded (add it to scripts/trt_names.py and run it)")
            continue
        absent = wanted - have
        if (kind == "all" and absent) or (kind == "any" and absent == wanted):
            out.append(f"{where}: {owner}.{{{', '.join(sorted(absent))}}}")
    return out


def test_the_table_covers_the_claimed_versions():
    majors = {version_tuple(v)[:2] for v in VERSIONS}
    assert {(10, 3), (10, 15), (11, 0), (11, 4)} <= majors
    for entry in VERSIONS.values():
        assert entry["wheel"].startswith("tensorrt_cu1") and len(entry["sha256"]) == 64


def test_only_the_scanned_files_import_tensorrt():
    importing = sorted(str(p.relative_to(ROOT)) for folder in ("pixdeploy", "export", "runtime")
                       for p in (ROOT / folder).rglob("*.py")
                       if any(isinstance(n, ast.Import) and any(a.name == "tensorrt" for a in n.names)
                              for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))))
    assert importing == sorted(SOURCES)


@pytest.mark.parametrize("path", SOURCES)
@pytest.mark.parametrize("version", list(VERSIONS))
def test_every_tensorrt_name_used_exists(path, version):
    found = uses((ROOT / path).read_text(encoding="utf-8"))
    assert len(found) > 5  # the scan sees the uses (a rename of `trt` would hide them all)
    assert missing(found, version) == [], f"{path} on TensorRT {version}"


def test_a_name_missing_from_a_version_is_caught():
    snippet = """
def f(trt, settings):
    trt.BuilderFlag.FP16
    runtime = trt.Runtime(None)
    runtime.no_such_method()
    [getattr(trt.LayerType, n) for n in names if hasattr(trt.LayerType, n)]
    getattr(trt.TacticSource, settings.source)
names = ("PLUGIN_V9",)
"""
    problems = missing(uses(snippet), "11.0.0.114")
    assert any("BuilderFlag.{FP16}" in p for p in problems)  # removed in TensorRT 11
    assert any("Runtime.{no_such_method}" in p for p in problems)
    assert any("LayerType.{PLUGIN_V9}" in p for p in problems)
    assert any("getattr(trt.TacticSource, settings.source) has no known set" in p for p in problems)
    assert missing(uses("def f(trt):\n    trt.BuilderFlag.FP16\n"), "10.3.0") == []
    # build_settings' names are resolved per version: the old --plugins flag was fine on 10.15, not on 10.3.
    override = 'def f(trt):\n    getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE")\n'
    assert missing(uses(override), "10.15.1.29") == [] and missing(uses(override), "10.3.0") != []


def test_engine_io_types_have_numpy_types():
    """`trt.nptype` must map every element type the graphs' inputs and outputs use."""
    for entry in VERSIONS.values():
        assert {"UINT8": "uint8", "INT64": "int64", "FLOAT": "float32", "BOOL": "bool"}.items() \
            <= entry["nptype"].items()


@pytest.mark.parametrize("version", list(VERSIONS))
def test_option_tables_agree_with_the_wheels(version):
    """The documented option tables of trt_support against the enums each wheel binds: equal for the version a
    table was read from, contained in every later version it is used for."""
    enums = VERSIONS[version]["enums"]
    major = version_tuple(version)[0]
    parser = parser_table(version).version
    exact = version in ("10.3.0", "11.0.0.114")
    for enum, table in (("BuilderFlag", BUILDER_FLAGS[major]), ("NetworkDefinitionCreationFlag", NETWORK_FLAGS[major]),
                        ("TacticSource", TACTIC_SOURCES[major])):
        assert table == set(enums[enum]) if exact else table <= set(enums[enum]), (enum, version)
    flags = PARSER_FLAGS[parser]
    exact = version in ("10.3.0", "10.15.1.29")
    assert flags == set(enums["OnnxParserFlag"]) if exact else flags <= set(enums["OnnxParserFlag"])
