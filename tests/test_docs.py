"""The README's Quick start stays true: CI runs its test command verbatim, the README
documents every registered mechanism, and its links and anchors resolve."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from effbench.attention import available

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    run, test = commands
    assert "effbench profile" in run and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the last command of .ci/run must be the README's test command"
    assert ci[-1] == test


FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def heading_slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: the text without its markup, lowercased,
    punctuation dropped, each space a hyphen; a repeated heading gets -1, -2, ..."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", markdown), re.M):
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
        text = re.sub(r"<[^>]+>", "", text).lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def relative_links(markdown: str) -> list[str]:
    """Every link and image target in the text outside code blocks, but those to the web."""
    targets = LINK.findall(FENCE.sub("", markdown))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def test_heading_slugs_follow_github() -> None:
    text = "# The spec: `bench.toml`\n```bash\n# not a heading\n```\n## `effbench diff`\n"
    text += "## A\n## A\n"
    assert heading_slugs(text) == {"the-spec-benchtoml", "effbench-diff", "a", "a-1"}


def test_readme_relative_links_and_anchors_resolve() -> None:
    """README.md is outside the documentation site (whose strict build checks docs/), so its
    links are checked here: each file or folder exists, each #anchor is a heading there."""
    readme = ROOT / "README.md"
    links = relative_links(readme.read_text())
    assert "docs/commands.md" in links, links  # the pattern finds the links at all
    broken = []
    for link in links:
        path, _, anchor = unquote(link).partition("#")
        target = (readme.parent / path).resolve() if path else readme
        if not target.exists():
            broken.append(f"{link}: no {path}")
        elif anchor and target.suffix == ".md" and anchor not in heading_slugs(target.read_text()):
            broken.append(f"{link}: no heading #{anchor} in {path or 'README.md'}")
    assert not broken, broken


NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
NUMBER = {w: i for i, w in enumerate(NUMBERS.split())}
ORDINAL = re.compile(r"\b(\w+(?:th|second|third|first))[ -]kind\b", re.I)
KIND_COUNT = re.compile(r"\b(\w+)[ -](?:attention )?(?:mechanisms|kinds)\b", re.I)


def prose_pages() -> list[Path]:
    """README and the docs that describe the code as it is (the results pages describe what
    was measured when, with the counts of their day)."""
    return [ROOT / "README.md", *(p for p in (ROOT / "docs").glob("*.md") if p.stem != "results")]


def test_counts_of_mechanisms_in_prose_come_from_the_registry() -> None:
    wrong = []
    pages = prose_pages()
    assert any(KIND_COUNT.search(p.read_text()) for p in pages)  # the pattern finds counts
    for page in pages:
        text = FENCE.sub("", page.read_text()).replace("\n", " ")
        for m in KIND_COUNT.finditer(text):
            word = m.group(1).lower()
            count = int(word) if word.isdigit() else NUMBER.get(word)
            if count is not None and count not in (1, len(available())):
                wrong.append(f"{page.name}: '{m.group(0)}' (the registry has {len(available())})")
        wrong += [f"{page.name}: '{m.group(0)}'" for m in ORDINAL.finditer(text)]
    assert not wrong, wrong


def test_the_mechanism_tables_list_the_registry() -> None:
    for page in (ROOT / "README.md", ROOT / "docs" / "mechanisms.md"):
        table = page.read_text().split("| kind |", 1)[1].split("\n\n", 1)[0]
        rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
        assert rows == list(available()), page.name


def test_the_quick_start_point_count_is_the_default_spec() -> None:
    from effbench.config.load import load_spec

    spec = load_spec(ROOT / "bench.toml")
    points = len(spec.models) * len(spec.profile.seq_lens)
    readme = (ROOT / "README.md").read_text()
    assert f"{points} points" in readme
    assert re.findall(r"\b(\d+) points\b", readme.split("## Quick start")[1].split("\n## ")[0]) == [
        str(points)
    ]
