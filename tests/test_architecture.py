"""The import rules of DESIGN.md, checked by parsing every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("kit", "partners", "gateway", "billing", "moderation", "engine", "kernels", "migrations")

# package -> project packages it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "engine": {"kernels"},
    "kit": set(),
    "moderation": {"kit"},
    "partners": {"kit", "engine"},
    "billing": {"kit", "partners", "engine"},
    "gateway": {"kit", "partners", "billing", "moderation", "engine"},
    "migrations": {"kit"},
}
# Where only some modules of a package may be imported: the pure-data ones.
ONLY_MODULES = {
    ("partners", "engine"): {"engine.manifest", "engine.schema", "engine.runner.protocol"},
    ("billing", "engine"): {"engine.manifest"},
    ("gateway", "engine"): {"engine.manifest", "engine.schema"},
}
# Third-party imports a package must never make (processes that must not load them).
FORBIDDEN_THIRD_PARTY = {
    "kernels": {"fastapi", "sqlalchemy", "celery"},
    "engine": {"fastapi", "sqlalchemy", "celery", "kit"},
    "kit": {"torch", "diffusers", "triton"},
    "moderation": {"torch", "diffusers", "triton"},
    "partners": {"torch", "diffusers", "triton"},
    "billing": {"torch", "diffusers", "triton"},
    "gateway": {"torch", "diffusers", "triton"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a file, with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def violations(root: Path) -> list[str]:
    """Every import in `root`'s packages that breaks the table."""
    out: list[str] = []
    for package, allowed in ALLOWED.items():
        pkg_dir = root / package
        if not pkg_dir.is_dir():
            continue
        for path in sorted(pkg_dir.rglob("*.py")):
            for lineno, module in imported_modules(path):
                top = module.split(".")[0]
                where = f"{path.relative_to(root)}:{lineno} imports {module}"
                if top in FORBIDDEN_THIRD_PARTY.get(package, set()):
                    out.append(f"{where} ({package} must not import {top})")
                if top not in PROJECT or top == package:
                    continue
                if top not in allowed:
                    out.append(f"{where} ({package} may not import {top})")
                    continue
                only = ONLY_MODULES.get((package, top))
                if only and module not in only and not any(module.startswith(m + ".") for m in only):
                    parent = module.rsplit(".", 1)[0]
                    if parent not in only:
                        out.append(f"{where} ({package} may import only {sorted(only)} of {top})")
    return out


def test_imports_follow_the_design_table() -> None:
    assert violations(ROOT) == []


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    for pkg, line in {
        "billing": "from gateway.models import Request\n",
        "kit": "import partners\n",
        "partners": "from engine.runner.server import Runner\n",
        "engine": "from kit.db import Base\n",
        "kernels": "import engine\n",
    }.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "bad.py").write_text(line)
    found = violations(tmp_path)
    assert {v.split(":")[0] for v in found} == {f"{pkg}/bad.py" for pkg in
                                                ("billing", "kit", "partners", "engine", "kernels")}, found
    assert any("billing may not import gateway" in v for v in found)
    assert any("partners may import only" in v for v in found)


def test_api_and_worker_processes_never_load_torch() -> None:
    code = (
        "import sys, gateway.app, gateway.worker; "
        "bad = [m for m in ('torch', 'diffusers', 'triton') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
