"""The layered house (docs/ARCHITECTURE.md): the torch-free layer stays torch-free, layers
import only downwards, and modules stay small enough to read."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "effbench"

# Layer 1 (no torch), layer 2 (torch, no I/O policy), layer 3 (runners), then the CLI. Within a
# layer the units are ranked too: a module imports only from its own unit or one listed before
# it (attention may not lean on measure, results may not lean on report).
ORDER: list[list[str]] = [
    ["__init__", "errors", "signals", "stats", "convergence", "contention", "config", "results",
     "locks", "env", "ratios", "crossover", "report", "diff"],
    ["device", "attention", "merging", "model", "data", "measure"],
    ["runs", "train", "sweep", "analyze", "deploy", "study", "plan"],
    ["cli", "launch", "__main__"],
]  # fmt: skip
LAYERS = {unit: layer for layer, units in enumerate(ORDER, 1) for unit in units}
RANK = {unit: rank for rank, unit in enumerate(u for units in ORDER for u in units)}
TORCH_FREE = [
    "effbench.errors", "effbench.locks", "effbench.signals", "effbench.config.spec",
    "effbench.config.load", "effbench.config.overrides", "effbench.config.sweeps",
    "effbench.config.attention", "effbench.results",
    "effbench.env", "effbench.contention", "effbench.crossover", "effbench.report",
    "effbench.stats", "effbench.config.budget", "effbench.convergence", "effbench.ratios",
    "effbench.diff",
    "effbench.launch", "effbench.cli",
    # runners, but planning a command (and so every spec error) needs no torch either
    "effbench.plan", "effbench.runs", "effbench.study",
]  # fmt: skip

LIMITS = {"function": 80, "class": 300, "command": 60}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts)


def _top(path: Path) -> str:
    """The top-level unit a module belongs to: `sweep` for effbench/sweep/scale.py."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def _run(args: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "effbench", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    return proc.returncode, imported_modules(proc.stderr)


def test_diff_never_imports_torch(tmp_path: Path) -> None:
    """`effbench diff` reads records only: a CI regression check needs no torch."""
    runs = PACKAGE.parent / "docs" / "results" / "cpu-amd-epyc-2core" / "deploy" / "diff"
    code, modules = _run(["diff", str(runs / "old"), str(runs / "new")], tmp_path)
    assert code == 0
    assert "effbench.diff" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_importtime_parser_sees_torch() -> None:
    # The check below would pass vacuously if the parser missed torch: prove it finds it.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import torch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "torch" in imported_modules(proc.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        *(
            [cmd, "--help"]
            for cmd in ("profile", "train", "scale", "analyze", "report", "export", "diff", "init")
        ),
    ],
    ids=lambda a: " ".join(a),
)
def test_help_does_not_import_torch(tmp_path: Path, args: list[str]) -> None:
    code, modules = _run(args, tmp_path)
    assert code == 0
    assert "effbench.cli" in modules or "effbench.cli.app" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


@pytest.mark.parametrize("command", ["profile", "train", "scale"])
@pytest.mark.parametrize(
    "spec",
    [
        '[profile]\nseq_lens = "x"\n',  # wrong type, and models missing
        "[backbone\n",  # not TOML
        '[[models]]\nname = "a"\nattention = { kind = "nope" }\n',  # unknown kind
        '[backbone]\nimage_size = 30\npatch_size = 4\n[[models]]\nname = "a"\n'
        'attention = { kind = "sdpa" }\n',  # image size not divisible by the patch
    ],
    ids=["types", "toml", "kind", "patch"],
)
def test_spec_errors_exit_2_without_torch(tmp_path: Path, command: str, spec: str) -> None:
    (tmp_path / "bad.toml").write_text(spec)
    code, modules = _run([command, "--spec", "bad.toml"], tmp_path)
    assert code == 2
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_layer_one_imports_no_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in TORCH_FREE)
        + "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
        + "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _unit(module: str) -> str:
    """The unit of a dotted module name: `sweep` for effbench.sweep.scale."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import in `graph` from a unit to one ranked above it in ORDER."""
    return sorted(
        f"{m} (layer {LAYERS[_unit(m)]}) imports {d} (layer {LAYERS[_unit(d)]})"
        for m, deps in graph.items()
        for d in deps
        if RANK[_unit(d)] > RANK[_unit(m)]
    )


def test_modules_import_only_downwards() -> None:
    # The rule bites: an attention module reaching up into measure, or layer 1 into a runner.
    assert upward_imports({"effbench.attention.sdpa": {"effbench.measure.dispatch"}})
    assert upward_imports({"effbench.results.files": {"effbench.sweep.scale"}})
    assert not upward_imports({"effbench.measure.flops": {"effbench.attention.base"}})
    wrong = upward_imports(import_graph())
    assert not wrong, wrong


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the effbench modules it imports anywhere: at import time, inside functions
    (the CLI's runners, loaded late) and under TYPE_CHECKING alike, so that no two modules
    lean on each other even lazily (a name imported from a package counts as its submodule
    where there is one)."""
    paths = {_module_name(p): p for p in _modules()}

    def owner(name: str) -> str:
        while name not in paths and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in paths else node.module for t in targets]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {owner(t) for t in targets if t.split(".")[0] == "effbench"}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`: each strongly connected set of two or more modules."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            part = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph = import_graph()
    assert "effbench.config.load" in graph["effbench.plan"]  # the graph sees real edges
    assert "effbench.config.spec" in graph["effbench.results.schema"]  # TYPE_CHECKING too
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not cycles(graph), cycles(graph)


def test_every_module_is_in_a_layer() -> None:
    assert {_top(p) for p in _modules()} <= set(LAYERS)


def _size_problems(path: Path, root: Path = PACKAGE) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        lines = node.end_lineno - node.lineno + 1
        if isinstance(node, ast.ClassDef):
            what = "class"
        elif any("command" in ast.unparse(d) for d in node.decorator_list):
            what = "command"
        else:
            what = "function"
        if lines > LIMITS[what]:
            rel = path.relative_to(root)
            out.append(f"{rel}:{node.lineno} {what} {node.name}: {lines} > {LIMITS[what]} lines")
    return out


def test_functions_classes_and_commands_stay_small() -> None:
    found = [p for path in _modules() for p in _size_problems(path)]
    assert not found, found


def test_size_check_counts_lines(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 80)
    cmd = tmp_path / "cmd.py"
    cmd.write_text("@app.command()\ndef c():\n" + "    x = 1\n" * 60)
    assert len(_size_problems(long, tmp_path)) == 1
    assert len(_size_problems(cmd, tmp_path)) == 1
    cmd.write_text("@app.command()\ndef c():\n" + "    x = 1\n" * 58)
    assert not _size_problems(cmd, tmp_path)


def kind_branches(path: Path, kinds: tuple[str, ...]) -> list[str]:
    """Comparisons with a kind's name, and literal collections of two or more kinds."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            consts = [n for n in (node.left, *node.comparators) if isinstance(n, ast.Constant)]
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            consts = [n for n in node.elts if isinstance(n, ast.Constant)]
            consts = consts if sum(c.value in kinds for c in consts) >= 2 else []
        else:
            continue
        out += [f"{path.name}:{c.lineno} {c.value!r}" for c in consts if c.value in kinds]
    return out


def test_only_attention_and_its_configs_know_single_kinds(tmp_path: Path) -> None:
    from effbench.config.attention import KINDS

    outside = [p for p in _modules() if _top(p) not in ("attention", "config")]
    found = [b for p in outside for b in kind_branches(p, KINDS)]
    assert not found, found
    probe = tmp_path / "probe.py"
    probe.write_text('if cfg.kind == "sdpa":\n    pass\nORDER = ("standard", "fused")\n')
    assert len(kind_branches(probe, KINDS)) == 3


def test_a_file_name_means_one_thing() -> None:
    """No two modules share a name, except a command's CLI module (cli/<command>.py), a report
    section (report/sections/<name>.py) and a config section (config/<name>.py), which
    present or configure the module of their name."""
    seen: dict[str, list[str]] = {}
    mirrors = {("cli",), ("report", "sections"), ("config",)}
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or rel.parts[:-1] in mirrors:
            continue
        seen.setdefault(path.stem, []).append(str(rel))
    for path in PACKAGE.iterdir():  # a package's name counts as a module's
        if path.is_dir() and (path / "__init__.py").exists():
            seen.setdefault(path.name, []).append(f"{path.name}/")
    shared = {name: where for name, where in seen.items() if len(where) > 1}
    assert not shared, shared
