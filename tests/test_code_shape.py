"""The product code stays in pieces a reader can hold in mind: no file over ~400 lines, no function over 60, no
public function taking more than 6 parameters that are not an options record. Click commands are exempt from the
last rule (click hands a command one parameter per option; the command builds the record for its stage)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 420
MAX_FUNCTION_LINES = 60
MAX_PUBLIC_PARAMS = 6


def is_click_command(node) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and target.attr in ("command", "group"):
            return True
    return False


def problems(root: Path) -> list[str]:
    out = []
    for folder in ("pixdeploy", "export", "runtime"):
        for path in sorted((root / folder).rglob("*.py")):
            rel, source = path.relative_to(root).as_posix(), path.read_text()
            if len(source.splitlines()) > MAX_FILE_LINES:
                out.append(f"{rel}: {len(source.splitlines())} lines")
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
                a = node.args
                params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                if not node.name.startswith("_") and len(params) > MAX_PUBLIC_PARAMS and not is_click_command(node):
                    out.append(f"{rel}:{node.lineno} {node.name}: {len(params)} parameters")
    return out


def test_the_product_code_keeps_its_shape():
    assert problems(ROOT) == []


def test_the_shape_check_sees_a_long_function_and_a_long_parameter_list(tmp_path):
    bad = tmp_path / "runtime" / "bad.py"
    bad.parent.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    bad.write_text(f"def long():\n{body}\n\n\ndef wide(a, b, c, d, e, f, g):\n    pass\n\n\n"
                   "@main.command()\ndef cli(a, b, c, d, e, f, g):\n    pass\n")
    assert problems(tmp_path) == [f"runtime/bad.py:1 long: {MAX_FUNCTION_LINES + 1} lines",
                                  f"runtime/bad.py:{MAX_FUNCTION_LINES + 4} wide: 7 parameters"]
