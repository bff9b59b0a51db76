"""The package as downstream projects import it: ``import warmstart`` costs no deep-learning library, every exported
name resolves, type checkers see the same names (``TYPE_CHECKING`` imports, ``py.typed``), and the version is the
installed one."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import warmstart

PACKAGE = Path(warmstart.__file__).parent
HEAVY = ("torch", "transformers", "timm", "datasets", "peft", "sklearn", "matplotlib", "accelerate")


def _imported_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_warmstart_imports_no_deep_learning_library():
    assert _imported_after("import warmstart; warmstart.__version__; dir(warmstart)") == []


def test_a_name_imports_only_what_its_module_needs():
    # the error type, the CLI runner and the policy (a value) need no deep-learning library
    assert _imported_after("from warmstart import WarmstartError, run_cli") == []
    assert _imported_after("from warmstart import FreezePolicy, STRATEGY_SPECS") == []


def test_every_exported_name_resolves_and_unknown_names_raise():
    for name in warmstart.__all__:
        assert getattr(warmstart, name) is not None, name
    try:
        warmstart.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name resolved")


def test_type_checkers_see_the_same_names_as_the_lazy_table():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {
        (node.module.removeprefix("warmstart."), alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    lazy = {(module, name) for module, names in warmstart._EXPORTS.items() for name in names}
    assert typed == lazy
    assert sorted(name for _, name in lazy) == warmstart.__all__


def test_the_package_ships_its_type_marker_and_version():
    assert (PACKAGE / "py.typed").is_file()
    assert warmstart.__version__ == importlib.metadata.version("warmstart")
    files = importlib.metadata.files("warmstart") or []
    # an editable install lists no package files; a wheel or sdist install must carry py.typed
    listed = [str(f) for f in files if str(f).startswith("warmstart/")]
    assert not listed or "warmstart/py.typed" in listed, json.dumps(listed[:5])


def _import_graph() -> dict[str, set[str]]:
    """Module -> the warmstart modules it imports, at any level (a function-level import counts: it would only hide
    a cycle), the lazy package ``__init__`` left out."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        if name == "warmstart":
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("warmstart"):
                if node.module == "warmstart":
                    imported |= {f"warmstart.{alias.name}" for alias in node.names}
                else:
                    imported.add(node.module)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_no_module_imports_itself_back():
    graph = _import_graph()
    assert "warmstart.training" in graph and "warmstart.data.sources" in graph  # the walk found the modules
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_exported_name_is_documented():
    for name in warmstart.__all__:
        value = getattr(warmstart, name)
        if callable(value):  # functions and classes (constants such as STRATEGIES are documented where defined)
            doc = (value.__doc__ or "").strip()
            assert len(doc) > 20, f"{name} has no docstring"


def test_no_private_name_is_imported_across_modules():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("warmstart"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.relative_to(PACKAGE)} imports {private} from {node.module}"


def test_every_module_imports_alone():
    """Each module imported first, in a process of its own (forked from one that has imported the third-party
    libraries but no warmstart module): an import that works only after another module has run fails here."""
    modules = sorted(m for m in _import_graph() if not m.endswith("__main__"))
    code = f"""
import os, sys, traceback, importlib
import torch, transformers, datasets, timm, sklearn.metrics, PIL.Image, yaml, accelerate
assert not [m for m in sys.modules if m.startswith("warmstart")]
failed = []
for module in {modules!r}:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(module)
print("FAILED", failed)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.stdout.strip().endswith("FAILED []"), done.stdout[-2000:] + done.stderr[-4000:]


def test_a_recipe_s_help_loads_only_what_parsing_needs():
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "text_classification.py"
    code = (
        f"import runpy, sys; sys.argv = [{str(recipe)!r}, '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
    )
    # the Trainer's arguments need torch and transformers; the model, data and report libraries wait for a run
    assert not {"timm", "sklearn", "matplotlib"} & set(_imported_after(code))


def test_training_arguments_are_changed_in_one_place():
    """After parsing, a run changes its TrainingArguments through warmstart.plan alone (logged, with a
    reason); an assignment anywhere else would be a decision no one can find."""
    assignment = re.compile(r"\b(training_args|training|config\.training)\.\w+ = ")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if assignment.search(line)
    ]
    assert found == []
    # and the one setattr of them is the plan's, applied when the Trainer is built
    applied = re.compile(r"setattr\((training_args|self\.asked),")
    setters = [path.name for path in PACKAGE.rglob("*.py") if applied.search(path.read_text())]
    assert sorted(setters) == ["plan.py"]
