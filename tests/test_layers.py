"""The package's import graph has no arrow back up: each subpackage imports only from the layers below it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_budgetcl"

# Bottom to top; a module may import its own layer and the layers below (imports for annotations only, under
# TYPE_CHECKING, do not count).
LAYERS = [
    {"utils"},
    {"models", "data"},
    {"accounting"},
    {"stream"},
    {"freezing"},
    {"methods"},
    {"config"},
    {"evaluation"},
    {"hub"},
    {"training"},
    {"runs", "compare"},
    {"cli", "__init__", "recipes"},  # recipes: the shipped recipe scripts and configs (a link to recipes/)
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(parts: list[str]) -> str:
    """The top-level unit (subpackage or root module) a dotted path inside the package belongs to."""
    return parts[0] if parts else "__init__"


def _runtime_imports(path: Path) -> list[tuple[int, list[str]]]:
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    module = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module if module[-1] == "__init__" else module[:-1]
    package = [p for p in package if p != "__init__"]
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            names = [target + [a.name] for a in node.names] if not target else [target]
            out += [(node.lineno, t) for t in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_budgetcl."):
            out.append((node.lineno, node.module.split(".")[1:]))
    return out


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    units.discard("__pycache__")
    assert units <= set(LEVEL), f"no layer declared for {sorted(units - set(LEVEL))}"


def test_no_import_goes_up_a_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        source = _unit(list(rel[:-1]) if len(rel) > 1 else [rel[0]])
        for line, target in _runtime_imports(path):
            unit = _unit(target)
            if unit in LEVEL and LEVEL[unit] > LEVEL[source]:
                violations.append(f"{path.relative_to(PACKAGE)}:{line} imports {'.'.join(target)}")
    assert not violations, "imports that go up a layer:\n" + "\n".join(violations)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a lower-layer module importing the trainer is reported."""
    fake = tmp_path / "hf_budgetcl"
    (fake / "stream").mkdir(parents=True)
    (fake / "stream" / "bad.py").write_text("from ..training.trainer import BudgetedCLTrainer\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    try:
        test_no_import_goes_up_a_layer()
    except AssertionError as err:
        assert "stream/bad.py:1 imports training.trainer" in str(err)
    else:
        raise AssertionError("an upward import went unnoticed")
