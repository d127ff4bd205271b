"""Every third-party module the package imports at module level is a core dependency.

Extras (peft, vllm, nnsight, ...) are imported inside the functions that need them, so a plain
`pip install persona-dynamics` imports every module; a module-level import of anything else breaks
the README's first command (as scipy once did).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from helpers.paths import ROOT


def core() -> set[str]:
    """The distributions pyproject.toml's `dependencies` name, normalised."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {norm(re.split(r"[<>=~\[ ;!]", d)[0]) for d in deps}


def norm(name: str) -> str:
    return name.lower().replace("_", "-")


def undeclared(declared: set[str]) -> dict[str, list[str]]:
    """File -> third-party modules it imports at module level from no declared distribution."""
    dists = packages_distributions()
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "src" / "persona_dynamics").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top in ("__future__", "persona_dynamics"):
                    continue
                if not {norm(d) for d in dists.get(top, [top])} & declared:
                    out.setdefault(str(path.relative_to(ROOT)), []).append(top)
    return out


def test_module_level_imports_are_core_dependencies():
    assert undeclared(core()) == {}
    # the check sees a missing one: without scipy, the toy's measurements would not import
    assert "scipy" in undeclared(core() - {"scipy"})["src/persona_dynamics/toy/measure.py"]
