"""The package's two parts: the library (hf_adaopt.core) imports nothing of the lab, and nothing imports in a cycle."""

from __future__ import annotations

import ast
import inspect
import json
import pathlib
import subprocess
import sys

from hf_adaopt import AdaOpt

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hf_adaopt"
LAB_DEPENDENCIES = ("datasets", "matplotlib", "huggingface_hub", "scipy", "sklearn", "peft", "jinja2", "tqdm")


def _imported_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_library_imports_nothing_of_the_lab_or_its_dependencies():
    torch_only = _imported_after("import hf_adaopt, hf_adaopt.core.fused, hf_adaopt.core.fused_cpu, "
                                 "hf_adaopt.core._variants")
    torch_baseline = set(_imported_after("import torch, torch.utils.cpp_extension"))  # torch brings tqdm itself
    assert [m for m in torch_only if m.startswith("hf_adaopt.lab")
            or (m.split(".")[0] in LAB_DEPENDENCIES and m not in torch_baseline)] == []
    # the Trainer pieces import transformers, which brings huggingface_hub and tqdm itself: nothing beyond that
    baseline = set(_imported_after("import transformers, transformers.trainer_callback, transformers.trainer_pt_utils, "
                                   "transformers.pytorch_utils"))
    trainer = _imported_after("from hf_adaopt import AdaOptCallback, create_optimizer_and_scheduler")
    assert [m for m in trainer if m.startswith("hf_adaopt.lab")] == []
    assert [m for m in trainer if m.split(".")[0] in LAB_DEPENDENCIES and m not in baseline] == []


def test_import_hf_adaopt_needs_torch_alone():
    modules = _imported_after("import hf_adaopt")
    assert "transformers" not in modules and "hf_adaopt.core.optimizer" in modules


def _module_imports(path: pathlib.Path) -> set[str]:
    """The hf_adaopt modules a file imports at module level (not inside functions: those are lazy by design)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_adaopt"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hf_adaopt"))
    return found


def test_no_module_level_import_cycle():
    names = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        names[name] = path
    graph = {name: {m for m in _module_imports(path) if m in names and m != name} for name, path in names.items()}

    def visit(node, stack, done):
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(node):], node])}")
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)


def test_the_top_level_holds_few_modules_and_the_two_parts():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert {"core", "lab"} <= set(top) and len(top) <= 8, top


def test_the_public_constructor_takes_at_most_14_parameters():
    parameters = [p for p in inspect.signature(AdaOpt.__init__).parameters if p != "self"]
    assert len(parameters) <= 14, parameters
