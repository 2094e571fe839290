"""Layer 1, no torch: what effbench writes and reads. `schema` (one pydantic model per kind
of record, the environment manifest, the fields every record shares), `files` (JSON Lines a
record at a time, atomic whole-file writes, paths kept inside their root, run ids) and
`predictions` (a run's per-image test predictions). Everything is importable from here."""

from __future__ import annotations

from effbench.results.files import (
    TEMPORARY,
    BadLine,
    JsonlWriter,
    inside,
    new_run_id,
    read_jsonl,
    replace_atomically,
    write_json_atomic,
    write_jsonl_atomic,
)
from effbench.results.predictions import (
    PREDICTIONS,
    load_predictions,
    save_predictions,
)
from effbench.results.schema import (
    FLOPS_UNIT,
    SCHEMA_VERSION,
    AnalyzeRecord,
    Compiled,
    Contention,
    CpuCheck,
    Crossover,
    Env,
    ExportRecord,
    LayerFidelity,
    MaxBatch,
    OpTime,
    PointVerdict,
    ProfileRecord,
    Record,
    ScaleRecord,
    ScaleSummaryRecord,
    Status,
    TrainEpochRecord,
    TrainRecord,
    record_base,
)

__all__ = [
    "FLOPS_UNIT",
    "PREDICTIONS",
    "SCHEMA_VERSION",
    "TEMPORARY",
    "AnalyzeRecord",
    "BadLine",
    "Compiled",
    "Contention",
    "CpuCheck",
    "Crossover",
    "Env",
    "ExportRecord",
    "JsonlWriter",
    "LayerFidelity",
    "MaxBatch",
    "OpTime",
    "PointVerdict",
    "ProfileRecord",
    "Record",
    "ScaleRecord",
    "ScaleSummaryRecord",
    "Status",
    "TrainEpochRecord",
    "TrainRecord",
    "inside",
    "load_predictions",
    "new_run_id",
    "read_jsonl",
    "record_base",
    "replace_atomically",
    "save_predictions",
    "write_json_atomic",
    "write_jsonl_atomic",
]
