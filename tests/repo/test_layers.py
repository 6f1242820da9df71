"""The layers hold: each room imports only its own layer or those below it, the light
modules load no web framework, Ray or model code, and no runner outside deployments/
reaches into a model class's private members."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAVY_WEB = ("fastapi", "starlette", "uvicorn", "ray")
MODELS = ("torch", "transformers")


def loaded_after_import(*modules: str) -> set[str]:
    """Top-level packages in sys.modules after importing `modules` in a fresh process."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        # The rules any runner (caption worker, bulk job, tools) can import.
        (
            ("ingress.core.service", "ingress.core.thumbnails", "ingress.core.fetch"),
            HEAVY_WEB + MODELS,
        ),
        (("ingress.settings",), HEAVY_WEB + MODELS),
        (
            (
                "ingress.stores.factory",
                "ingress.stores.lancedb",
                "ingress.stores.weaviate",
                "ingress.stores.s3_blobs",
                "ingress.stores.local_blobs",
            ),
            HEAVY_WEB + MODELS,
        ),
        # What the model deployments promise, without the models.
        (("deployments.contracts", "deployments.settings"), HEAVY_WEB + MODELS),
        # What an Ingress replica imports: its deployment and the builder's `assemble`;
        # and the caption worker's replica.
        (("ingress.http.deployment", "ingress.app"), MODELS),
        (("ingress.workers.caption_worker",), MODELS),
        # The command-line client speaks HTTP only.
        (("imagesearch_cli.main",), ("ray", *MODELS)),
    ],
    ids=["core", "settings", "stores", "model-contracts", "ingress-replica", "worker", "cli"],
)
def test_light_modules_load_nothing_heavy(
    modules: tuple[str, ...], forbidden: tuple[str, ...]
) -> None:
    loaded = loaded_after_import(*modules)
    assert not loaded & set(forbidden), f"{modules} load {sorted(loaded & set(forbidden))}"


# Which rooms each room may import from (its own included). ingress.settings is a
# pydantic-only leaf that every room may read.
ALLOWED: dict[str, set[str]] = {
    "deployments": {"deployments"},
    "ingress.stores": {"ingress.stores", "ingress.settings", "deployments.settings"},
    "ingress.core": {"ingress.core", "ingress.stores", "ingress.settings"},
    "ingress.http": {
        "ingress.http",
        "ingress.core",
        "ingress.stores",
        "ingress.settings",
        "deployments.contracts",
        "deployments.settings",
    },
    # The background runners share the Serve-side model client and metrics with the edge.
    "ingress.workers": {
        "ingress.workers",
        "ingress.core",
        "ingress.stores",
        "ingress.settings",
        "ingress.http.model_client",
        "ingress.http.metrics",
        "deployments.contracts",
        "deployments.settings",
    },
    "ingress.tools": {
        "ingress.tools",
        "ingress.app",
        "ingress.core",
        "ingress.stores",
        "ingress.settings",
        "deployments",
        "imagesearch_cli",
    },
    "imagesearch_cli": {"imagesearch_cli", "ingress.stores.records"},
}
PROJECT = ("deployments", "ingress", "imagesearch_cli", "tests", "benchmarks")


def _room(module: str) -> str | None:
    return next((room for room in ALLOWED if module == room or module.startswith(room + ".")), None)


def _project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PROJECT}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("deployments", "ingress", "imagesearch_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found.append((module.removesuffix(".__init__"), path))
    return found


def test_every_module_imports_only_its_layer_or_below() -> None:
    wrong = []
    for module, path in _modules():
        room = _room(module)
        if room is None:
            continue  # ingress.app, ingress.settings and the command shims compose rooms
        for imported in _project_imports(path):
            if not any(imported == ok or imported.startswith(ok + ".") for ok in ALLOWED[room]):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_runtime_packages_import_no_tests_or_benchmarks() -> None:
    wrong = [
        f"{module} imports {imported}"
        for module, path in _modules()
        for imported in _project_imports(path)
        if imported.split(".")[0] in {"tests", "benchmarks"}
    ]
    assert not wrong, "\n".join(wrong)


def _private_members(path: Path) -> set[str]:
    """Names of the private methods and attributes of the classes in a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_runner_touches_a_model_class_private_members() -> None:
    private = set().union(*(_private_members(path) for path in (ROOT / "deployments").glob("*.py")))
    assert private, "the model classes have private members to protect"
    runners = [
        path
        for package in ("ingress", "benchmarks", "imagesearch_cli")
        for path in (ROOT / package).rglob("*.py")
    ]
    wrong = []
    for path in runners:
        for node in ast.walk(ast.parse(path.read_text())):
            own = isinstance(node, ast.Attribute) and (
                isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            )
            if isinstance(node, ast.Attribute) and node.attr in private and not own:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    assert not wrong, "\n".join(wrong)
