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


def test_every_package_the_bento_imports_is_pinned_in_bentofile():
    """The Bento's image installs bentofile.yaml's packages, unlocked: one the packed code imports but only
    BentoML asks for (python-multipart, starlette, pydantic, anyio: any version, or a wide range) would come
    in whatever version is newest on the day the image is built."""
    import importlib.metadata
    import re
    import sys

    import yaml

    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    packed = [path for pattern in bentofile["include"] if pattern.endswith(".py") for path in REPO.glob(pattern)]
    assert REPO / "service" / "service.py" in packed
    imported = {m.split(".")[0] for path in packed for m in imported_modules(path)} - {*PACKAGES, "__future__", *sys.stdlib_module_names}
    pinned = {re.split(r"[=<>!~\[ ]", spec)[0].lower() for spec in bentofile["python"]["packages"]}
    distributions = importlib.metadata.packages_distributions()
    exact_dependencies = {"pydantic_core"}  # pydantic pins its own core to one version
    unpinned = sorted(m for m in imported - exact_dependencies if not {d.lower() for d in distributions.get(m, [m])} & pinned)
    assert not unpinned, f"imported by the packed code but not pinned in bentofile.yaml: {unpinned}"
