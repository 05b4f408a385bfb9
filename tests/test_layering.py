"""The layering rule of the top-level layout: the four model packages never import `ragless` (the application that
composes them), not even lazily inside a function; `model_common`, which they share, imports none of them either.

Every .py file is parsed (`ast`), not imported, so that an import anywhere in a module counts: at the top, inside a
function, under ``if TYPE_CHECKING``, or as ``importlib.import_module("ragless...")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_PACKAGES = ("preprocess_model", "retrieve_generate_model", "synth_pipeline", "rewards")
# package -> the top-level packages it must not import
FORBIDDEN = {**{p: ("ragless",) for p in MODEL_PACKAGES}, "model_common": ("ragless", *MODEL_PACKAGES)}


def _dynamic_target(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("...")`` / ``import_module("...")`` / ``__import__("...")``."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def forbidden_imports(source: str, forbidden: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source`` of a package in ``forbidden`` or one of its submodules.

    >>> forbidden_imports("import os\\ndef f():\\n    from ragless.store import IndexReader\\n", ("ragless",))
    [(3, 'ragless.store')]
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node)) is not None:
            modules = [target]
        else:
            continue
        found += [(node.lineno, m) for m in modules if m.split(".")[0] in forbidden]
    return sorted(found)


def test_the_checker_finds_every_form_of_import():
    source = "\n".join([
        "import ragless",
        "import ragless.distributed as d",
        "from ragless import components",
        "from ragless.eval.metrics import token_f1",
        "import raglessish, ragless_extra",  # other names that merely start with it
        "from . import ragless",  # a relative import: a module of the package itself
        "def f():",
        "    import importlib",
        "    return importlib.import_module('ragless.store')",
        "if False:",
        "    __import__('ragless')",
    ])
    assert forbidden_imports(source, ("ragless",)) == [
        (1, "ragless"), (2, "ragless.distributed"), (3, "ragless"), (4, "ragless.eval.metrics"),
        (9, "ragless.store"), (11, "ragless"),
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_package_does_not_import_what_composes_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python file under {package}/"
    violations = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                  for path in files
                  for line, module in forbidden_imports(path.read_text(encoding="utf-8"), FORBIDDEN[package])]
    assert not violations, (f"{package}/ must not import {', '.join(FORBIDDEN[package])} (the layering rule of the "
                            f"top-level layout):\n" + "\n".join(violations))
