"""The package's structure: imports between its folders go one way, and every module fits on a few screens."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fspkd"
# each folder may import from its own layer and the layers before it, never from a later one
LAYERS = [("core",), ("models", "data"), ("accel",), ("methods",), ("distiller",), ("training",),
          ("experiments", "integrations"),
          ("cli", "__init__", "__main__")]
MAX_LINES = 450


def layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part.removesuffix(".py") in names)


def fspkd_imports(path: Path) -> set[str]:
    """The first component under ``fspkd`` of every fspkd module ``path`` imports, lazily or not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.level == 0 else ["fspkd.relative"]
        found |= {name.split(".")[1] for name in names if name.startswith("fspkd.")}
    return found


def test_imports_between_folders_go_one_way():
    backwards = []
    for path in PACKAGE.rglob("*.py"):
        mine = layer(path.relative_to(PACKAGE).parts[0])
        assert "relative" not in fspkd_imports(path), f"{path}: use absolute fspkd imports"
        backwards += [f"{path.relative_to(PACKAGE)} imports fspkd.{name}" for name in fspkd_imports(path)
                      if layer(name) > mine]
    assert backwards == []


def test_no_module_is_longer_than_a_few_screens():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert long == {}
