"""The report survives any record: lines that are not UTF-8, not JSON (cut short, nested too
deeply, an integer too long to read) or not a whole record of their kind (a field missing or of
the wrong type, a number that is not finite or out of range) are skipped and listed with a
reason naming the field; names are shown as they are, in HTML, Markdown and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import report_records as rec
from matplotlib.backends.backend_agg import FigureCanvasAgg
from specs import run_cli

from effbench.report.checks import admit
from effbench.report.figures import literal, new_figure, slug
from effbench.report.render import md_cell
from effbench.results import read_jsonl

SCRIPT = "<script>alert(1)</script>"
FRAC = r"$\frac{a}{b}$"
# Names that mean something to matplotlib's mathtext, Markdown, HTML or Jinja. The second
# has an even number of `$` that mathtext cannot parse: drawn as mathtext, it raises.
NAMES = [FRAC, r"a_b\c $\frac{$", SCRIPT, "{{ x }} 100%", "p|q *r* [s](t)"]


def _without(record: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != field}


def _line(record: dict[str, Any], **raw: str) -> bytes:
    """`record` as a JSON line, with `raw` fields' values written as given (NaN, 1e999 ...)."""
    text = json.dumps({**record, **dict.fromkeys(raw, "RAW")})
    for field, value in raw.items():
        text = text.replace(f'"{field}": "RAW"', f'"{field}": {value}')
    return (text + "\n").encode()


# (line, what its reason must say); each is one line of bad.jsonl, in this order.
BAD: list[tuple[bytes, str]] = [
    (_line(_without(rec.train("sdpa"), "seed")), "train record: seed: missing"),
    (_line(rec.train("sdpa"), test_top1='"high"'), "train record: test_top1: Input should be"),
    (_line(rec.scale("sdpa", 16), image_size="[16]"), "scale record: image_size: Input should"),
    (_line(_without(rec.profile("sdpa", 17), "seq_len")), "profile record: seq_len: missing"),
    (_line(rec.epoch("sdpa"), train_loss="true"), "train_epoch record: train_loss: Input should"),
    (_line(rec.analyze("sdpa", cls_maps=[[[1, 2]]])), "analyze record: cls_maps[0][0] is not"),
    (_line(rec.analyze("sdpa", layers=[])), "analyze record: images, layers and cls_maps"),
    (_line(rec.train("sdpa"), test_top1="1e999"), "train record: test_top1 is inf"),
    (_line(rec.epoch("sdpa"), train_loss="NaN"), "train_epoch record: train_loss is nan"),
    (_line(rec.scale("sdpa", 16), infer_ms="-Infinity"), "scale record: infer_ms is -inf"),
    (_line(rec.train("sdpa"), params="7" * 5000), "invalid JSON: Exceeds the limit"),
    (_line(rec.train("sdpa"), params="7" * 200), "train record: params is out of range"),
    (_line(rec.train("sdpa", test_top1=1.5)), "test_top1 = 1.5 is not between 0 and 1"),
    (_line(rec.scale("sdpa", 16, mode="nope")), "scale record: mode 'nope' is not infer"),
    (_line(rec.train("sdpa"), model='"\\ud800"'), "train record: model: not valid Unicode"),
    (_line({"kind": 5}), "kind is not a string"),
    (_line({"kind": "later", "model": "x"}), "later record: run_id: missing"),
    (b'{"kind": "train", "model": "caf\xe9"}\n', "not UTF-8 text (byte 0xe9 at column 32)"),
    (b"[" * 100_000 + b"\n", "invalid JSON: nested too deeply"),
    (_line(rec.train("sdpa"))[:-40], "invalid JSON: "),  # cut short: the last line
]


def _good(root: Path) -> None:
    """Whole records of models named like NAMES, and of `sdpa`, in results/ under `root`."""
    records = [rec.train("sdpa", test_top1=0.6), rec.scale("sdpa", 16), rec.scale("sdpa", 32)]
    for i, name in enumerate(NAMES):
        records += [
            rec.train(name, mechanism="nystrom", test_top1=0.5 + i / 100),
            rec.epoch(name, mechanism="nystrom"),
            rec.epoch(name, mechanism="nystrom", epoch=2, train_loss=1.5),
            rec.scale(name, 16, mechanism="nystrom"),
            rec.scale(name, 32, mechanism="nystrom", infer_ms=2.0),
            rec.profile(name, 17, mechanism="nystrom"),
        ]
    records.append(rec.analyze(FRAC, mechanism="nystrom", classes=[SCRIPT, "$x$ cat_1"]))
    # A run that diverged: its NaN train_s is read as missing, and the run is named as failed.
    records.append(rec.train("sdpa", seed=1, status="nan", test_top1=None, error="loss NaN"))
    # A record of a kind this report does not know: kept (counted with its environment).
    records.append({**rec.profile("sdpa", 17), "kind": "later"})
    results = root / "results"
    results.mkdir()
    lines = [json.dumps(r) for r in records]
    failed = next(i for i, r in enumerate(records) if r.get("status") == "nan")
    lines[failed] = lines[failed].replace('"train_s": 60.0', '"train_s": NaN')
    (results / "good.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (results / "bad.jsonl").write_bytes(b"".join(line for line, _ in BAD))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report of good records and one bad line of each kind: (output dir, CLI output)."""
    root = tmp_path_factory.mktemp("inputs")
    _good(root)
    (root / "results" / "bad-spec.json").write_bytes(b'{"a": "\xff"}')
    (root / "results" / "deep-spec.json").write_text('{"a": ' * 40 + "1" + "}" * 40)
    (root / "results" / "dir.jsonl").mkdir()
    code, output = run_cli("report", str(root / "results"), "-o", str(root / "out"))
    assert code == 0, output
    return root, output


def test_every_bad_line_is_listed_with_its_reason(report: tuple[Path, str]) -> None:
    root, output = report
    assert "Traceback" not in output
    assert f"{len(BAD) + 3} skipped line(s) listed in the report" in output
    page = (root / "out" / "report.html").read_text(encoding="utf-8")
    md = (root / "out" / "report.md").read_text(encoding="utf-8")
    bad = root / "results" / "bad.jsonl"
    for i, (_, reason) in enumerate(BAD, start=1):
        item = next((x for x in page.splitlines() if f"<li>{bad}:{i}: " in x), "")
        assert reason.replace("'", "&#39;") in item, (i, reason, item)
        assert f"{md_cell(bad)}:{i}: " in md, i
    assert "(the last line: cut short?)" in page
    results = root / "results"
    assert f"{results / 'bad-spec.json'}:0: unreadable spec: &#39;utf-8&#39; codec" in page
    assert f"{results / 'deep-spec.json'}:0: unreadable spec: nested too deeply" in page
    assert f"{results / 'dir.jsonl'}:0: unreadable: [Errno 21] Is a directory" in page


def test_good_records_are_reported_and_names_shown_as_they_are(
    report: tuple[Path, str],
) -> None:
    root, output = report
    assert f"{6 + 6 * len(NAMES)} records from 2 file(s)" in output
    page = (root / "out" / "report.html").read_text(encoding="utf-8")
    md = (root / "out" / "report.md").read_text(encoding="utf-8")
    for section in ("accuracy", "pareto", "scaling", "breakdown", "profile", "curves", "maps"):
        assert f'<section id="{section}">' in page, section
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "<td>{{ x }} 100%</td>" in page and r"<td>$\frac{a}{b}$</td>" in page
    assert r"| \$\\frac{a}{b}\$ |" in md and r"| p\|q \*r\* \[s\](t) |" in md
    assert "seed 1: nan" in page  # the diverged run: kept, and named as failed
    assert "1 later" in page  # the record of an unknown kind, counted
    figures = sorted((root / "out" / "report_files").glob("*.png"))
    assert len(figures) == len(set(figures)) == 7 and all(f.stat().st_size for f in figures)


def test_reader_turns_every_bad_line_into_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"".join(line for line, _ in BAD) + b"\n")
    good, bad = read_jsonl(path)  # no schema check: the JSON-level problems only
    reasons = {b.line: b.reason for b in bad}
    assert reasons[11].startswith("invalid JSON: Exceeds the limit (4300 digits)")
    assert reasons[18].startswith("not UTF-8 text") and "nested too deeply" in reasons[19]
    assert reasons[20].startswith("invalid JSON") and "cut short" not in reasons[20]  # not last
    assert len(good) == len(BAD) - 4  # [, the long integer, the bytes, the cut-short line


def test_a_failed_record_keeps_its_status_and_loses_its_non_finite_figures() -> None:
    failed = {**rec.epoch("sdpa", status="nan"), "train_loss": float("nan")}
    assert admit(failed) is None and failed["train_loss"] is None
    ok = {**rec.epoch("sdpa"), "train_loss": float("nan")}
    assert admit(ok) == "train_epoch record: train_loss is nan"
    nested = rec.analyze("sdpa")
    nested["layers"][0]["tv_mean"] = float("inf")
    assert admit(nested) == "analyze record: layers[0].tv_mean is inf"
    newer = {**rec.train("sdpa"), "a_field_from_a_newer_effbench": 1}
    assert admit(newer) is None


def test_names_are_drawn_literally() -> None:
    fig, (ax,) = new_figure(1)
    for i, name in enumerate([*NAMES, "_hidden"]):
        ax.plot([1, 2], [i, i + 1], label=literal(name))
    ax.set_yticks([0, 1], [literal(FRAC), literal("$")])
    legend = ax.legend()
    FigureCanvasAgg(fig).draw()  # raises where a name is parsed as mathtext
    drawn = [t._preprocess_math(t.get_text()) for t in legend.get_texts()]
    assert drawn == [(n, False) for n in NAMES] + [(" _hidden", False)]
    ticks = [t._preprocess_math(t.get_text()) for t in ax.get_yticklabels()]
    assert ticks == [(FRAC, False), ("$", False)]
    assert literal("x" * 100).endswith("…") and len(literal("x" * 100)) == 40


def test_markdown_and_file_stems_are_safe() -> None:
    assert md_cell("a|b\nc <b>&") == r"a\|b c &lt;b&gt;&amp;"
    assert md_cell(r"$\x_1*$") == r"\$\\x\_1\*\$"
    assert slug("maps", SCRIPT) == "maps--script-alert-1---script"
    assert slug("maps", "é" * 300) == "maps" and len(slug("x" * 300)) == 80
