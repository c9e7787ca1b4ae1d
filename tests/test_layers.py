"""The house rules (layers, one binary shape), checked rather than reviewed.

- `lint-imports` (import-linter, contracts in pyproject.toml): deocc_jax's layers
  import only downwards and the library never imports the tools built on it.
- No function-local import of a deocc module inside the library: a lazy import
  that hides a cycle is still a cycle. The one exception is a binary's `main`
  (it may import after flags are parsed); third-party imports may be local
  (heavy or optional packages), and each of those carries a comment saying why.
"""

import ast
import pathlib
import subprocess
import sys


REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = REPO / "deocc_jax"
OWN_PACKAGES = ("deocc_jax", "data_prep", "launch", "benchmarks", "configs")


def test_import_contracts_are_kept():
    linter = pathlib.Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(linter), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] if node.level == 0 else ["deocc_jax (relative)"]
    return []


def _local_imports(tree: ast.Module):
    """(enclosing top-level function name, line, module, has_comment) of imports inside functions."""
    for top in tree.body:
        for node in ast.walk(top):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                for module in _imported_modules(inner):
                    yield getattr(top, "name", "?"), inner.lineno, module


def _has_reason(lines: list[str], i: int) -> bool:
    """A comment on the import line, on another line of its block of imports, or just above it."""
    while i >= 0:
        text = lines[i].strip()
        if "#" in text:
            return True
        if not text.startswith(("import ", "from ")):
            return False
        i -= 1
    return False


def test_no_function_local_imports_of_deocc_modules():
    offenders, uncommented = [], []
    for path in sorted(LIBRARY.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        seen = set()
        for top_name, line, module in _local_imports(ast.parse(source)):
            if (line, module) in seen:
                continue
            seen.add((line, module))
            where = f"{path.relative_to(REPO)}:{line} imports {module}"
            if module.split(".")[0] in OWN_PACKAGES or module.startswith("deocc_jax ("):
                if top_name != "main":
                    offenders.append(where)
            elif not _has_reason(lines, line - 1):
                uncommented.append(where)
    assert not offenders, "function-local imports of deocc modules:\n" + "\n".join(offenders)
    assert not uncommented, ("function-local third-party imports need a one-line reason "
                             "(a comment on the line or the line above):\n" + "\n".join(uncommented))


def _python_files():
    for package in OWN_PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_one_binary_shape():
    """Flags live at a binary's top, never in a `__main__` block or a define_flags() function,
    and nothing edits sys.path: every program runs as `python -m package.module`."""
    offenders = []
    for path in _python_files():
        text = path.read_text()
        tree = ast.parse(text)
        rel = path.relative_to(REPO)
        if "sys.path.insert" in text or "sys.path.append" in text:
            offenders.append(f"{rel}: edits sys.path")
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "define_flags":
                offenders.append(f"{rel}:{node.lineno}: define_flags()")
            is_main = (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                       and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")
            if is_main and "DEFINE_" in ast.unparse(node):
                offenders.append(f"{rel}:{node.lineno}: flags defined in the __main__ block")
    assert not offenders, "\n".join(offenders)
