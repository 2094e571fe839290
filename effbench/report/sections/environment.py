"""The environment section: where the records were measured (device, software, threads,
allocator, platform) and the resolved specs; summary: the environment ids."""

from __future__ import annotations

import json
from typing import Any

from effbench.report.content import ReportData, env_label, measures
from effbench.report.document import Part, Section

COLUMNS = ["id", "device", "software", "threads", "allocator", "platform", "version", "records"]


def _cells(e: str, env: dict[str, Any], counts: dict[str, int]) -> list[str]:
    return [
        e,
        str(env.get("device_name", "?")),
        f"torch {env.get('torch', '?')}" + (f", CUDA {env['cuda']}" if env.get("cuda") else ""),
        str(env.get("threads", "?")) + (f" ({env['openmp']})" if env.get("openmp") else ""),
        str(env.get("allocator", "?")),
        f"{env.get('platform', '?')}, Python {env.get('python', '?')}",
        f"effbench {env.get('effbench', '?')}",
        ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
    ]


def section(data: ReportData) -> Part:
    records = data.results.records
    if not records:
        return None, []
    sec = Section("environment", "Where this was measured")
    counts: dict[str, dict[str, int]] = {}
    first: dict[str, dict[str, Any]] = {}
    for r in (r for r in records if measures(r)):
        e = data.env(r)
        counts.setdefault(e, {})
        counts[e][r["kind"]] = counts[e].get(r["kind"], 0) + 1
        first.setdefault(e, r.get("env") or {})
    if first:
        sec.table(COLUMNS, [_cells(e, env, counts[e]) for e, env in first.items()])
    labels = {e: env_label(k) for k, e in data.envs.keys.items()}
    for digest, (path, spec) in sorted(data.results.specs.items()):
        sec.details(f"Resolved spec {digest} ({path})", json.dumps(spec, indent=2))
    if not first:
        return sec, []
    return sec, ["Measured on: " + "; ".join(f"{e} = {labels[e]}" for e in first) + "."]
