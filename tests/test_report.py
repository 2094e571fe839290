"""`effbench analyze` and `effbench report` on results from tiny real runs: every section with
data renders in HTML and Markdown, names are escaped, unreadable lines are listed, the report
side never imports torch, and the HTML opens in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from specs import MINI, run_cli

from effbench.config.attention import KINDS
from effbench.report import pareto_front
from effbench.report.content import model_order
from effbench.report.figures import PALETTE, colour_of
from effbench.results import read_jsonl, write_jsonl_atomic

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SECTIONS = (
    "accuracy", "pareto", "scaling", "breakdown", "profile", "curves", "resolution",
    "fidelity", "maps", "environment",
)  # fmt: skip

SPEC = """
[backbone]
image_size = 32
patch_size = 8
dim = 32
depth = 2
heads = 2

[[models]]
name = "sdpa"
attention = {{ kind = "sdpa" }}
[[models]]
name = "nystrom"
attention = {{ kind = "nystrom", landmarks = 2 }}
[[models]]
name = "performer"
attention = {{ kind = "performer", features = 8 }}
[[models]]
name = "linformer"
attention = {{ kind = "linformer", k = 8 }}

[profile]
seq_lens = [17]
batch_size = 2
device = "cpu"
warmup = 0
min_run_time = 0.01

[train]
dataset = "{dataset}"
data_dir = "{data_dir}"
download = false
epochs = 2
batch_size = 64
eval_batch_size = 256
device = "cpu"
output_dir = "{out}"
synthetic_samples = 128

[scale]
resolutions = [16, 32]
batch_size = 2
mode = "both"
device = "cpu"
warmup = 0
min_run_time = 0.01
repeats = 1
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ and results/ from tiny real runs of train, scale (+ --checkpoint), profile and
    analyze."""
    root = tmp_path_factory.mktemp("report")
    dataset, data_dir = ("cifar10", MINI) if MINI.is_dir() else ("synthetic", root / "none")
    spec = root / "bench.toml"
    spec.write_text(SPEC.format(dataset=dataset, data_dir=data_dir, out=root / "runs"))
    res = str(root / "results")
    for args in (
        ["train", "-s", str(spec)],
        ["scale", "-s", str(spec), "-o", res],
        ["scale", "-s", str(spec), "--checkpoint", str(root / "runs/nystrom/seed0"),
         "--res", "16", "24", "32", "--mode", "infer", "--no-breakdown", "-o", res],
        ["profile", "-s", str(spec), "--breakdown", "-o", res],
        ["analyze", *(str(root / "runs" / m / "seed0")
                      for m in ("sdpa", "nystrom", "performer", "linformer")), "-o", res],
    ):  # fmt: skip
        code, out = run_cli(*args)
        assert code == 0, (args, out)
    return root


def analyzed(root: Path) -> dict[str, dict]:
    (path,) = (root / "results").glob("analyze-*.jsonl")
    good, bad = read_jsonl(path)
    assert not bad
    return {r["model"]: r for r in good}


def test_analyze_fidelity_and_maps(results: Path) -> None:
    recs = analyzed(results)
    sdpa, nystrom, performer = recs["sdpa"], recs["nystrom"], recs["performer"]
    for layer in sdpa["layers"]:  # exact attention against itself
        assert layer["rel_output_error"] < 1e-5 and layer["tv_mean"] < 1e-5
    for layer in nystrom["layers"]:  # 2 landmarks for 17 tokens
        assert layer["rel_output_error"] > 1e-3 and layer["tv_mean"] is None  # signed map
        assert layer["pinv_residual"] is not None and layer["pinv_residual"] >= 0
    for layer in nystrom["layers"]:
        assert layer["ginv_residual"] is not None and layer["ginv_residual"] >= 0
    assert recs["linformer"]["map_row_stochastic"] is False
    assert all(layer["tv_mean"] is None for layer in recs["linformer"]["layers"])
    for r in recs.values():
        # Nystrom's rows sum to 1 only as far as its 6-step pseudo-inverse has converged,
        # which with 2 nearly equal landmarks is not far (its residual is recorded too);
        # Linformer's rows need not sum to 1 at all (its map is signed).
        tol = {"nystrom": 0.1, "linformer": 10.0}.get(r["model"], 1e-4)
        assert all(layer["row_sum_max_dev"] < tol for layer in r["layers"]), r["model"]
        assert len(r["layers"]) == 2 and r["grid"] == [4, 4]
        assert len(r["cls_maps"]) == 2 and len(r["cls_maps"][0]) == len(r["images"]) == 4
        assert len(r["rollout"]) == 4 and len(r["rollout"][0]) == 4  # (gh, gw) per image
        for grid in (r["cls_maps"][0][0], r["rollout"][0]):
            total = sum(map(sum, grid))  # a row's weight on the patches: 1 minus CLS's own
            if r["map_row_stochastic"]:
                assert 0 < total <= 1 + tol + 1e-4, total  # + rounding to 5 decimals
        assert len(r["images"][0]) == 32 and len(r["images"][0][0][0]) == 3
    curve = performer["performer_curve"]
    assert [c["features"] for c in curve] == [16, 32, 64, 128, 256]
    assert curve[-1]["rel_error"] < curve[0]["rel_error"]  # more features, closer to exact


def test_report_renders_every_section_in_both_formats(results: Path) -> None:
    out = results / "report"
    code, output = run_cli(
        "report", str(results / "runs"), str(results / "results"), "-o", str(out)
    )
    assert code == 0, output
    page = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert page.count("<img ") >= 10 and 'src="data:image/png;base64,' in page
    assert "report_files/" not in page  # self-contained
    for title in ("## Accuracy and cost", "## Scaling with resolution", "## Attention maps"):
        assert title in md
    linked = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert linked and all((out / p).is_file() for p in linked)
    assert "Maps that are not distributions over the keys" in page
    assert "nystrom, linformer." in page or "linformer, nystrom." in page
    assert "‖AZA − A‖ / ‖A‖" in page and "— (not a distribution)" in page
    assert "Most accurate (" in page and "Test-set resolution:" in page and "Measured on:" in page
    assert "Fastest inference" in page and "Distance from exact attention" in page


def test_names_are_escaped_and_bad_lines_listed(results: Path, tmp_path: Path) -> None:
    src = results / "results"
    data = tmp_path / "data"
    shutil.copytree(src, data)
    run = next((results / "runs").glob("*/seed0/train.jsonl"))
    final = next(r for r in read_jsonl(run)[0] if r["kind"] == "train")
    evil = {**final, "model": "<script>alert(1)</script>"}
    with (data / "evil.jsonl").open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(evil) + "\n")
        fh.write('{"kind": "train", "model": "cut off\n')
        fh.write("[1, 2, 3]\n")
    code, output = run_cli("report", str(data), "-o", str(tmp_path / "out"))
    assert code == 0, output
    assert "2 skipped line(s)" in output
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert f"{data / 'evil.jsonl'}:2: invalid JSON" in page
    assert f"{data / 'evil.jsonl'}:3: not a result record" in page


def _mark_contended(r: dict, phase: str) -> None:
    r["contended"] = True
    r["cpu_checks"] = {
        phase: {
            "wall_s": 0.3, "threads": 2, "cpus": 2, "cpu_share": 0.5, "wait_share": 0.5,
            "others_cpus": 1.0, "attempts": 3, "disturbed": True, "reason": "busy",
        }
    }  # fmt: skip


def _quiet(records: list[dict]) -> None:
    """Clear contention the test machine really had while the fixture ran, so that only the
    points this test marks are contended."""
    for r in records:
        if r.get("kind") == "scale_summary":
            r["contended"] = {}
        elif "contended" in r:
            r["contended"] = False
            r["cpu_checks"] = {}


def test_contended_figures_are_marked_and_left_out_of_verdicts(
    results: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(results / "results", data)
    for other in data.glob("*.jsonl"):  # the fixture's other results: quiet too
        quiet = read_jsonl(other)[0]
        _quiet(quiet)
        write_jsonl_atomic(other, quiet)
    (path,) = [p for p in data.glob("scale-*.jsonl") if '"scale_summary"' in p.read_text()]
    records = read_jsonl(path)[0]
    _quiet(records)
    small = [r for r in records if r["kind"] == "scale" and r["image_size"] == 16]
    fastest = min(small, key=lambda r: r["infer_ms"])
    _mark_contended(fastest, "infer")
    profiled = next(p for p in data.glob("profile-*.jsonl"))
    prof = read_jsonl(profiled)[0]
    _quiet(prof)
    _mark_contended(prof[0], "fwd")
    write_jsonl_atomic(path, records)
    write_jsonl_atomic(profiled, prof)

    code, output = run_cli("report", str(data), "-o", str(tmp_path / "out"), "-f", "md")
    assert code == 0, output
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if "Fastest inference" in x)
    at_16 = line.split("at 16 px ")[1].split(";")[0]
    assert not at_16.startswith(fastest["model"]) and "1 contended figure(s) left out" in at_16
    assert "Contended timings (1 profile, 1 scale record(s))" in md
    assert "Contended points (timed while other work held the CPU)" in md
    assert "rests on contended figures at 16 px" in md
    # fwd marked (the mark escaped in Markdown)
    assert re.search(rf"\| {prof[0]['model']} \| [0-9.,]+\\\* / [0-9.,]+ \|", md)


def test_report_errors(tmp_path: Path) -> None:
    code, out = run_cli("report", str(tmp_path / "missing"))
    assert code == 2 and "no such file or directory" in out
    code, out = run_cli("report", str(tmp_path))
    assert code == 2 and "no usable effbench records" in out
    (tmp_path / "bad.jsonl").write_text('{"kind": "train"}\n')
    code, out = run_cli("report", str(tmp_path))
    assert code == 2 and "(1 line(s) skipped, e.g. " in out and "bad.jsonl:1: train record" in out
    code, out = run_cli("report", str(tmp_path), "--format", "pdf")
    assert code == 2 and "choose html, md or both" in out
    code, out = run_cli("analyze", str(tmp_path / "nope"))
    assert code == 2 and "no such run directory" in out


def test_report_side_never_imports_torch(results: Path) -> None:
    script = (
        "import sys; from pathlib import Path; "
        "from effbench.report import build_report, collect, write_report; "
        f"r = build_report(collect([Path({str(results)!r})])); "
        f"write_report(r, Path({str(results / 'no-torch')!r}), ['html', 'md']); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_public_names_survive_importing_every_submodule() -> None:
    """`effbench.report` re-exports lazily: no submodule may shadow an exported name."""
    import importlib
    import pkgutil
    from types import ModuleType

    import effbench.report as report

    for info in pkgutil.walk_packages(report.__path__, "effbench.report."):
        importlib.import_module(info.name)
    shadowed = [n for n in report.__all__ if isinstance(getattr(report, n), ModuleType)]
    assert not shadowed, shadowed
    assert callable(report.collect) and callable(report.build_report)


def test_colours_follow_the_registry_and_pareto_front() -> None:
    # Models are listed, and coloured, in the configs' order of their kinds.
    kinds = {f"m-{k}": k for k in reversed(KINDS)}
    assert model_order(kinds, kinds) == [f"m-{k}" for k in KINDS]
    assert [colour_of(f"m-{k}", kinds) for k in KINDS] == list(PALETTE[: len(KINDS)])
    assert pareto_front([(1, 50), (2, 40), (3, 60), (4, 55), (0.5, 10)]) == [
        (0.5, 10),
        (1, 50),
        (3, 60),
    ]


def _chromium() -> str | None:
    return os.environ.get("EFFBENCH_CHROMIUM") or shutil.which("chromium")


def test_html_opens_in_a_headless_browser(results: Path) -> None:
    """Every image decodes and the console stays clean; the screenshot is kept as an
    artefact. CI installs Debian's chromium and sets EFFBENCH_REQUIRE_BROWSER=1."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("EFFBENCH_REQUIRE_BROWSER"):
            pytest.fail("chromium not found; install Debian's chromium or set EFFBENCH_CHROMIUM")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright

    out = results / "browser"
    code, output = run_cli(
        "report", str(results / "runs"), str(results / "results"), "-o", str(out)
    )
    assert code == 0, output
    messages: list[str] = []
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chrome.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.goto((out / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate(
            "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        chrome.close()
    assert len(widths) >= 10 and all(w > 0 for w in widths), widths
    assert not [m for m in messages if m.startswith(("error", "pageerror"))], messages


def test_wheel_ships_the_templates(tmp_path: Path) -> None:
    """An installed effbench renders without the source tree: the wheel carries them."""
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(repo)],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("effbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("report.html", "report.md"):
        assert f"effbench/report/templates/{name}" in names, names


def test_every_section_module_is_in_the_order() -> None:
    import pkgutil

    from effbench.report import sections

    modules = {m.name for m in pkgutil.iter_modules(sections.__path__)}
    assert modules == set(sections.ORDER) and len(sections.ORDER) == len(sections.SECTIONS)


def test_records_that_time_nothing_add_no_environment(tmp_path: Path) -> None:
    from report_records import ENV, analyze, profile

    from effbench.report.build import build_report
    from effbench.report.inputs import collect
    from effbench.results import write_jsonl_atomic

    other = ENV.model_copy(update={"allocator": "glibc malloc (huge pages)"}).model_dump()
    write_jsonl_atomic(tmp_path / "p.jsonl", [profile("sdpa", 65)])
    write_jsonl_atomic(tmp_path / "a.jsonl", [{**analyze("sdpa"), "env": other}])
    summary = "\n".join(build_report(collect([tmp_path])).summary)
    assert "Measured on: E1 = " in summary and "E2" not in summary
