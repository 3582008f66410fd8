"""The layer table of docs/ARCHITECTURE.md, checked: every import in posttrain/ — module-level and function-local,
`import x` and `from x import y`, absolute and relative — goes down the table, or sideways where it allows.

A failure lists every offending import as `file:line  importer (layer) imports imported (layer)`; the fix is to
move the imported thing down to where both can reach it (docs/ARCHITECTURE.md, "Where do I add …"). The planted
imports below show the check failing for the right reasons.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "posttrain"

# Lowest first. A layer is a list of groups. A module may import: any module of a lower layer; a module of an
# earlier group of its own layer; anything in its own unit (its package, e.g. posttrain.data, or its own module)
# except where TRAIN_LOOPS says otherwise. Nothing imports a command module (the CLI runs them by name) from
# outside its own unit.
LAYERS: list[tuple[str, list[list[str]]]] = [
    # rollout/params.py: SamplingParams, a leaf dataclass that the configs hold as their `sampling` section and the
    # engine reads — below config, so both reach it.
    ("base", [["posttrain", "posttrain.errors"], ["posttrain.rollout.params"]]),
    ("algos", [["posttrain.algos"]]),
    ("config", [["posttrain.config"], ["posttrain.presets"]]),
    ("building blocks", [["posttrain.distributed", "posttrain.track", "posttrain.sandbox"],
                         ["posttrain.checkpoint", "posttrain.data", "posttrain.tasks"],
                         ["posttrain.models", "posttrain.rollout", "posttrain.envs"],
                         ["posttrain.rewards", "posttrain.run_dir"]]),
    ("search/eval", [["posttrain.search"], ["posttrain.eval"]]),
    ("loops", [["posttrain.train", "posttrain.classic"]]),
    ("commands", [["posttrain.demo", "posttrain.generate", "posttrain.explain", "posttrain.export",
                   "posttrain.eval.run"]]),
    ("cli", [["posttrain.cli"], ["posttrain.__main__"]]),
]
COMMANDS = "commands"

# Inside train/ the loops are peers: a loop imports train/common.py, preflight.py and its own helpers, and another
# loop only to run it as a stage of its own.
TRAIN_LOOPS = {"sft", "reward", "process_reward", "preference", "rl", "rft", "distill"}
STAGES = {("rft", "sft"),                 # a rejection-sampling round ends in an SFT run
          ("distill", "sft"),             # chain-of-thought distillation is SFT on the teacher's rationales
          ("reward", "process_reward")}   # `posttrain rm reward.mode=prm` is the process reward model's loop



# ---- the checker -----------------------------------------------------------------------------------------------------

def _units() -> dict[str, tuple[int, int]]:
    """unit prefix → (layer index, group index)."""
    return {unit: (i, j) for i, (_, groups) in enumerate(LAYERS) for j, group in enumerate(groups) for unit in group}


def unit_of(module: str) -> str | None:
    """The longest table entry that is `module` or a package above it; None for a module the table misses."""
    units = _units()
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in units:
            return ".".join(parts[:n])
    return None


def layer_of(module: str) -> str:
    unit = unit_of(module)
    return "unlisted" if unit is None else LAYERS[_units()[unit][0]][0]


def is_module(name: str) -> bool:
    """A module or package of posttrain (`from posttrain.train import sft` imports the module sft)."""
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported posttrain module) for every import statement anywhere in the tree — inside functions,
    classes and `if` blocks too. `from pkg import name` is the module pkg.name when that is a module, else pkg."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from .. import z
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else source))
    found = list(dict.fromkeys(found))  # `from x import a, b` is one import of x
    return [(line, name) for line, name in found if name == "posttrain" or name.startswith("posttrain.")]


def rule_broken(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported` (None when it may)."""
    a, b = unit_of(importer), unit_of(imported)
    if a is None or b is None:
        return "not in the layer table"
    units = _units()
    if units[b][0] == [name for name, _ in LAYERS].index(COMMANDS) and a != b:
        return "nothing imports a command module"  # but a command package (demo/) is one unit: its parts may
    if a == b:
        if a == "posttrain.train":
            loop, other = importer.rpartition(".")[2], imported.rpartition(".")[2]
            if loop in TRAIN_LOOPS and other in TRAIN_LOOPS and loop != other and (loop, other) not in STAGES:
                return "a loop imports another loop only to run it as a stage"
        return None
    if units[b] < units[a]:
        return None
    return "a higher layer" if units[b][0] > units[a][0] else "a sibling the table does not allow"


def violations(path: Path, module: str) -> list[str]:
    """Every import of the file at `path` (holding `module`) that breaks the table, as
    "file:line  importer (layer) imports imported (layer): why"."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for line, imported in imports_of(tree, module, path.name == "__init__.py"):
        why = rule_broken(module, imported)
        if why is not None:
            where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
            out.append(f"{where}:{line}  {module} ({layer_of(module)}) imports {imported} ({layer_of(imported)}): "
                       f"{why}")
    return out


def package_modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append((path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)))
    return out


# ---- the package follows the table -----------------------------------------------------------------------------------

def test_every_module_has_a_layer():
    assert [module for _, module in package_modules() if unit_of(module) is None] == []


def test_imports_go_down_the_layers():
    found = [v for path, module in package_modules() for v in violations(path, module)]
    assert not found, "imports against docs/ARCHITECTURE.md's layer table:\n" + "\n".join(found)


# ---- planted imports are caught --------------------------------------------------------------------------------------

def plant(tmp_path, module: str, function_body: str) -> Path:
    """A copy of `module`'s file with a function that imports something, appended at the end."""
    original = PACKAGE.parent / Path(*module.split("."))
    source = original.with_suffix(".py") if original.with_suffix(".py").is_file() else original / "__init__.py"
    copy = tmp_path / source.name
    copy.write_text(source.read_text() + "\n\ndef _planted():\n" + "".join(f"    {line}\n"
                                                                         for line in function_body.splitlines()))
    return copy


def test_a_function_local_upward_import_is_caught(tmp_path):
    copy = plant(tmp_path, "posttrain.rewards.contract", "from posttrain.train import sft\nreturn sft")
    assert violations(PACKAGE / "rewards" / "contract.py", "posttrain.rewards.contract") == []
    found = violations(copy, "posttrain.rewards.contract")
    line = len(copy.read_text().splitlines()) - 1
    assert found == [f"{copy}:{line}  posttrain.rewards.contract (building blocks) imports posttrain.train.sft "
                     "(loops): a higher layer"]


@pytest.mark.parametrize("module, body, imported, why", [
    ("posttrain.classic.common", "from posttrain.train.common import batch_plan", "posttrain.train.common",
     "a sibling the table does not allow"),
    ("posttrain.train.sft", "import posttrain.generate", "posttrain.generate", "nothing imports a command module"),
    ("posttrain.eval.accuracy", "from posttrain.eval import run", "posttrain.eval.run",
     "nothing imports a command module"),
    ("posttrain.models.loading", "from posttrain.rewards import ModelReward", "posttrain.rewards",
     "a sibling the table does not allow"),
    ("posttrain.data.packing", "from ..train import common", "posttrain.train.common", "a higher layer"),
    ("posttrain.train.rl", "from posttrain.train.rft import run", "posttrain.train.rft",
     "a loop imports another loop only to run it as a stage"),
])
def test_planted_imports_against_the_table_are_caught(tmp_path, module, body, imported, why):
    found = violations(plant(tmp_path, module, body), module)
    assert len(found) == 1 and f"imports {imported} (" in found[0] and found[0].endswith(why), found


def test_allowed_imports_pass(tmp_path):
    for module, body in [("posttrain.rewards.contract", "from posttrain.models.loading import load_model"),
                         ("posttrain.train.rft", "from posttrain.train import sft"),
                         ("posttrain.cli", "from posttrain.rewards import score_all"),
                         ("posttrain.eval.metrics", "from posttrain.search import voting")]:
        assert violations(plant(tmp_path, module, body), module) == [], (module, body)
