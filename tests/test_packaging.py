"""pyproject.toml and requirements.lock cannot drift apart: pyproject declares ranges (tunesmith
installs into an environment a user has), the lock the one exact set that scripts/setup.sh
installs and CI tests. Every pin must lie in its declared range, every declared package must be
pinned, every third-party import must be declared, and the wheel must carry every data file."""

from __future__ import annotations

import ast
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tunesmith.cli import OPTIONAL_MODULES

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_distributions = cache(packages_distributions)  # seconds: it reads every installed package's file list


def _pins(name: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by canonical name."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, sep, pinned = line.partition("==")
            assert sep, f"{name}: {line!r} is not pinned with =="
            pins[canonicalize_name(package)] = pinned.strip()
    return pins


def _declared() -> dict[str, dict[str, Requirement]]:
    """The requirements of the core ("") and of each extra, by canonical name (the extras'
    references to tunesmith itself left out)."""
    groups = {"": PROJECT["project"]["dependencies"], **PROJECT["project"]["optional-dependencies"]}
    return {
        group: {canonicalize_name(r.name): r for r in map(Requirement, items) if r.name != "tunesmith"}
        for group, items in groups.items()
    }


def test_every_lock_pin_satisfies_its_declared_range():
    pins = _pins("requirements.lock")
    outside, unpinned = [], []
    for group, requirements in _declared().items():
        for name, requirement in requirements.items():
            if name not in pins:
                unpinned.append(f"{group or 'core'}: {requirement}")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                outside.append(f"{group or 'core'}: {requirement} excludes the pinned {name}=={pins[name]}")
    assert not outside, outside
    assert not unpinned, f"declared but not pinned in requirements.lock (so never installed by setup.sh): {unpinned}"


def test_every_declared_requirement_has_bounds():
    for group, requirements in _declared().items():
        for requirement in requirements.values():
            operators = {spec.operator for spec in requirement.specifier}
            exact = operators == {"=="}
            assert exact or (operators & {">=", ">"} and operators & {"<", "<="}), (
                f"{group or 'core'}: {requirement} needs a lower and an upper bound"
            )


def test_extras_hold_no_core_package_and_none_is_empty():
    declared = _declared()
    core = set(declared.pop(""))
    for group, requirements in declared.items():
        assert not core & set(requirements), f"extra {group} repeats core packages {core & set(requirements)}"
        extra = PROJECT["project"]["optional-dependencies"][group]
        assert extra, f"extra {group} is empty"


def _third_party_imports() -> dict[str, str]:
    """Top-level modules that src/tunesmith imports (anywhere, lazy imports too), with one file that does."""
    found = {}
    for path in sorted((ROOT / "src" / "tunesmith").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top != "tunesmith" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    declared = {name for requirements in _declared().values() for name in requirements}
    model_packages = set(_pins("requirements-models.txt"))  # found with find_spec, installed on their own
    distributions = _distributions()
    missing = []
    for module, where in _third_party_imports().items():
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not owners & (declared | model_packages):
            missing.append(f"{module} (imported in {where}; distribution {sorted(owners) or 'not installed'})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_optional_modules_belong_to_the_extra_the_cli_names():
    declared = _declared()
    distributions = _distributions()
    for module, extra in OPTIONAL_MODULES.items():
        assert extra in declared, f"cli.OPTIONAL_MODULES names an extra {extra!r} that pyproject lacks"
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert not owners or owners & set(declared[extra]), f"{module} comes from {owners}, not extra {extra!r}"


def test_package_data_covers_every_file_that_is_not_python():
    package = ROOT / "src" / "tunesmith"
    covered = {path for pattern in PROJECT["tool"]["setuptools"]["package-data"]["tunesmith"]
               for path in package.glob(pattern)}  # fmt: skip
    files = {p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert (package / "resources" / "demo.yaml") in covered
    assert not files - covered, f"not in the wheel (add to [tool.setuptools.package-data]): {sorted(files - covered)}"
