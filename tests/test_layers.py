"""The house rules that code review alone would let drift (README "Architecture").

``lint-imports`` (import-linter) checks the contracts in ``pyproject.toml``: every import, also the
ones inside functions, goes down the layers, nothing below the Airflow wrappers imports Airflow, and
the product never imports the demo kit. Run it yourself: ``.venv/bin/lint-imports --config pyproject.toml``.
The tests mirror the package: every product module with logic has its test module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "plugins" / "obslake"
TESTS = PROJECT / "tests"

# Modules whose behaviour is tested through a shared suite rather than a module of their own: each
# (suite, evidence) must exist and contain the evidence (what it calls of the module), checked below.
SHARED_SUITES = {
    # one contract suite runs every test against S3 (moto), GCS (emulator) and local stores alike
    "storage/base.py": [("storage/test_stores.py", "obslake.storage.base")],
    "storage/s3.py": [("storage/test_stores.py", "obslake.storage.s3")],
    "storage/gcs.py": [("storage/test_stores.py", "obslake.storage.gcs")],
    "storage/local.py": [("storage/test_stores.py", "obslake.storage.local")],
    # the model mapper is what the dry run and the import run: tested per model type and per bad input
    "schema/mapping.py": [("schema/test_model_types.py", "validate_file"), ("schema/test_duplicate_ids.py",
                                                                            "obslake.schema.mapping")],
    "schema/validate.py": [("schema/test_bad_inputs.py", "obslake.schema.validate"),
                           ("schema/test_model_types.py", "obslake.schema.validate")],
    # the DAG factory is tested on the DAGs it builds, as Airflow parses them
    "dag_factory.py": [("dags/test_import_dags.py", "DagBag"), ("fabric/test_fabric_dags.py", "DagBag")],
    # the lake trace source is exercised by every export of lake traces
    "fabric/lake_source.py": [("fabric/test_export.py", "obslake.fabric.lake_source"),
                              ("fabric/test_sources.py", "obslake.fabric.lake_source")],
}


def test_imports_follow_the_layers():
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache", "--config", str(PROJECT / "pyproject.toml")], cwd=PROJECT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in out.stdout, out.stdout[-2000:]


def _has_logic(path: Path) -> bool:
    """A module with a function or method that does something (not only re-exports, constants, plain
    dataclasses and protocols, whose methods are a docstring and ``...``)."""

    def stub(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        body = [n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        return not body or all(isinstance(n, ast.Pass) for n in body)

    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not stub(n)
               for n in ast.walk(ast.parse(path.read_text())))


def test_tests_mirror_the_package():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" or not _has_logic(path):
            continue
        mirror = TESTS / Path(rel).parent / f"test_{path.name}"
        if mirror.exists():
            continue
        suites = SHARED_SUITES.get(rel)
        if not suites:
            missing.append(f"{rel}: expected {mirror.relative_to(PROJECT)}")
            continue
        for suite, evidence in suites:
            test = TESTS / suite
            if not test.exists() or evidence not in test.read_text():
                missing.append(f"{rel}: {suite} does not exist or does not contain {evidence!r}")
    assert missing == [], "\n".join(missing)


def test_shared_suites_name_no_module_that_has_its_own_tests():
    """A module that gained a mirrored test module leaves the list (so the list stays honest)."""
    stale = [rel for rel in SHARED_SUITES
             if (TESTS / Path(rel).parent / f"test_{Path(rel).name}").exists() or not (PACKAGE / rel).exists()]
    assert stale == []
