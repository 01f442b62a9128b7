"""The torch-free layers import no torch and no training or export code, read from the source (the behavioural
tests with ``sys.modules["torch"] = None`` complement this: they run one path, this reads every import).

Lazy imports inside a function are allowed only where listed here, each for an opt-in that needs more than the
runtime (the user asked for it by an option)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pixdeploy.runtime": ROOT / "runtime", "pixdeploy.export": ROOT / "export", "pixdeploy": ROOT / "pixdeploy"}
FORBIDDEN = ("torch", "pixdeploy.export", "pixdeploy.training", "pixdeploy.model", "pixdeploy.generation",
             "pixdeploy.checkpoint", "pixdeploy.data", "pixdeploy.demo", "onnxscript")
# (module, imported) -> why a function of a torch-free module may import it when called
LAZY_ALLOWED = {
    ("pixdeploy.folding", "torch"): "fold_torch and letterbox_torch, the training twins the runtime never calls",
}
TORCH_FREE_ROOTS = ("pixdeploy.runtime", "pixdeploy.runtime.pipeline", "pixdeploy.runtime.bundle",
                    "pixdeploy.runtime.openvino_backend", "pixdeploy.cpu", "pixdeploy.runtime.backends",
                    "pixdeploy.runtime.tensorrt_backend", "pixdeploy.runtime.onnxruntime_backend",
                    "pixdeploy.runtime.bench", "pixdeploy.runtime.bench_report", "pixdeploy.runtime.machine_facts",
                    "pixdeploy.runtime.timing", "pixdeploy.runtime.sampling", "pixdeploy.runtime.serve",
                    "pixdeploy.runtime.engine_header")


def source(module: str) -> Path | None:
    for prefix, folder in sorted(PACKAGES.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix):].lstrip(".").split(".") if module != prefix else []
            base = folder.joinpath(*rest)
            for path in (base.with_suffix(".py") if rest else None, base / "__init__.py"):
                if path is not None and path.is_file():
                    return path
    return None


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of a file."""
    top, lazy = set(), set()
    tree = ast.parse(path.read_text())

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            (lazy if nested else top).update(names)
            visit(child, nested)

    visit(tree, False)
    return top, lazy


def forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_the_runtime_and_its_core_import_no_torch_nor_training_or_export_code():
    seen, todo, problems = set(), list(TORCH_FREE_ROOTS), []
    while todo:
        module = todo.pop()
        path = source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        top, lazy = imports(path)
        problems += [f"{module} imports {n} at module level" for n in top if forbidden(n)]
        problems += [f"{module} imports {n} in a function" for n in lazy
                     if forbidden(n) and (module, n) not in LAZY_ALLOWED
                     and not any((module, n.rsplit(".", 1)[0]) == k for k in LAZY_ALLOWED)]
        todo += [n for n in top | lazy if n.startswith("pixdeploy") and not forbidden(n)
                 and (module, n) not in LAZY_ALLOWED]
    assert {"pixdeploy.runtime.bundle", "pixdeploy.config", "pixdeploy.folding", "pixdeploy.tokenizer"} <= seen
    assert not problems, "\n".join(sorted(problems))


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\n\ndef f():\n    from pixdeploy.training import train\n")
    top, lazy = imports(bad)
    assert not any(map(forbidden, top)) and any(map(forbidden, lazy))


def import_graph() -> dict[str, set[str]]:
    """pixdeploy module -> the pixdeploy modules it imports, at module level or in a function (a lazy import closes
    a loop as surely as a top-level one: it only moves the failure to the call)."""
    modules = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if source(name) == path:
                modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for imported in set().union(*imports(path)):
            while imported and imported not in modules:  # `from a.b import c`: c may be a name, not a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                found.add(imported)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert {"pixdeploy.runtime.backends", "pixdeploy.cli.app", "pixdeploy.export.quantize"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# ---- the bundle format spells its own names ----

def bundle_names() -> set[str]:
    """The bundle's file names (its layout's constants) and the manifest keys only the manifest uses: the fields
    of its records that no other format of this project shares a word with (``files``, ``graphs``, ``precision``
    or ``source`` are also a checkpoint's, a calibration cache's or a report's)."""
    from pixdeploy.runtime.bundle import layout

    files = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v}
    keys = {"variants", "engines", "special_tokens", "export_profile", "decoder_form", "cpu_scheme", "ratios_vs_fp32",
            "rejected_by_parity", "checkpoint_step", "calibration", "cache", "engines.json"}
    return files | keys


# (file, literal) -> why it may be spelled outside runtime/bundle/
NAMES_ALLOWED = {
    ("pixdeploy/checkpoint.py", "tokenizer.json"): "the checkpoint format's own file, named like the bundle's",
    ("pixdeploy/demo.py", "variants"): "a key of the demo's own JSON report",
}


def spelled_bundle_names(root: Path) -> list[str]:
    names = bundle_names()
    found = []
    for folder in ("pixdeploy", "export", "runtime"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("runtime/bundle/"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names and (rel, node.value) not in NAMES_ALLOWED:
                    found.append(f"{rel}:{node.lineno} {node.value!r}")
    return found


def test_only_the_bundle_package_spells_a_bundle_file_name_or_manifest_key():
    assert {"manifest.json", "tokenizer.json", "text_embeddings.npy", "parity.json", "variants"} <= bundle_names()
    assert spelled_bundle_names(ROOT) == []


def test_the_name_check_sees_a_manifest_key(tmp_path):
    bad = tmp_path / "export" / "bad.py"
    bad.parent.mkdir()
    bad.write_text('def f(m):\n    return m["variants"], "parity.json"\n')
    assert sorted(spelled_bundle_names(tmp_path)) == ["export/bad.py:2 'parity.json'", "export/bad.py:2 'variants'"]
