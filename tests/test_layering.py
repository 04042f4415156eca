"""The architecture's import rules, read from the source (a static check: an import inside a function
counts too, where the runtime checks in test_capture only see what one command loaded)."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

PACKAGES = ("gesture_core", "training", "service", "benchmarks", "datasets")
# package -> the top-level packages of this repository it must never import
FORBIDDEN = {
    "gesture_core": {"training", "service", "benchmarks", "tests"},  # what training and serving share
    "service": {"training", "benchmarks", "tests"},  # a bento packs service/ and gesture_core/ only
    "training": {"service", "benchmarks", "tests"},
    "benchmarks": {"tests"},  # test helpers are not product code; the hostile inputs live in benchmarks/
    "datasets": {"training", "service", "benchmarks", "tests"},
}


def imported_modules(path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def package_imports(package: str) -> dict[str, set[str]]:
    return {str(path.relative_to(REPO)): imported_modules(path) for path in sorted((REPO / package).rglob("*.py"))}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_architecture_allows(package):
    assert (REPO / package).is_dir()
    broken = {
        path: sorted(m for m in modules if m.split(".")[0] in FORBIDDEN[package])
        for path, modules in package_imports(package).items()
    }
    assert not {path: found for path, found in broken.items() if found}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_framework_modules(package):
    private = {path: sorted(m for m in modules if "._internal" in m or m.startswith("_internal"))
               for path, modules in package_imports(package).items()}  # fmt: skip
    assert not {path: found for path, found in private.items() if found}
