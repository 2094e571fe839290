"""The spec a command reads: a file, a recipe shipped with effbench
(`effbench/recipes/*.toml`, package data), or, where no ./bench.toml is, the default spec
shipped beside them (`effbench/bench.toml`). Torch-free."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from effbench.config.fields import DEFAULT_SPEC
from effbench.errors import UsageError

RECIPES = "recipes"
QUICK_RECIPE = "cpu-mini"


def shipped_spec() -> Path:
    """The default spec shipped with effbench (`effbench/bench.toml`, the same file as the
    repository's), read where no ./bench.toml is."""
    return Path(str(resources.files("effbench").joinpath(DEFAULT_SPEC)))


def recipe_names() -> list[str]:
    """The spec presets shipped with effbench (`effbench/recipes/*.toml`)."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("effbench").joinpath(RECIPES).iterdir()
        if p.name.endswith(".toml")
    )


def recipe_path(name: str) -> Path:
    """The TOML file of a shipped recipe.

    Raises:
        UsageError: for an unknown recipe, listing the recipes.
    """
    names = recipe_names()
    if name not in names:
        raise UsageError(f"--recipe {name!r}: unknown recipe; choose one of {', '.join(names)}")
    return Path(str(resources.files("effbench").joinpath(RECIPES, f"{name}.toml")))


def spec_file(spec: Path, recipe: str | None, *, default: Path) -> Path:
    """The spec file a command reads: a shipped recipe's, or `spec`; for the `default` path
    when no such file is here, the default shipped with effbench (`shipped_spec`).

    Raises:
        UsageError: for a recipe beside a --spec other than the default, or an unknown one.
    """
    if recipe is None:
        return shipped_spec() if spec == default and not spec.exists() else spec
    if spec != default:
        raise UsageError("--spec and --recipe: choose one")
    return recipe_path(recipe)


def compare_spec_file(spec: Path, recipe: str | None, *, quick: bool, default: Path) -> Path:
    """The spec file `compare` reads: `spec_file`, with --quick as the cpu-mini recipe.

    Raises:
        UsageError: for --quick beside another recipe or beside a --spec of the user's.
    """
    if quick and recipe not in (None, QUICK_RECIPE):
        raise UsageError(f"--quick is the {QUICK_RECIPE} recipe; drop --recipe {recipe}")
    if quick and spec != default:
        raise UsageError(
            f"--quick is the {QUICK_RECIPE} recipe, which brings its own spec; drop --spec "
            f"{spec}, or drop --quick and make the spec small with --set"
        )
    return spec_file(spec, QUICK_RECIPE if quick else recipe, default=default)
