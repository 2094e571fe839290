"""Energy on NVIDIA GPUs: joules per call of a function, from NVML's total-energy counter
(`nvmlDeviceGetTotalEnergyConsumption`: millijoules since the driver loaded, on Volta and
newer), read through `nvidia-ml-py` (the `energy` extra).

The counter moves in steps, every 20 to 100 ms depending on the GPU, so one reading can be a
step old. The calls therefore run for a window of at least `MIN_WINDOW_S` that opens and
closes where the counter steps (what is read there is the energy up to that moment, not a
step before it), and that lasts until the counter has stepped at least `MIN_UPDATES` times
and `MIN_BLOCKS` blocks of calls have run (or `LONG_WINDOW_S` has passed), so that a slow
counter or a long call lengthens it. What is left is less than one block of calls at each
end, unbiased. The counter is read between blocks of calls of about `BLOCK_S` each (CUDA
synchronised after each block), not after every call, so that the GPU is kept as busy as
when the calls are timed.

Energy is an extra figure, never a reason for a measurement to fail: where there is no
counter (another device, no `nvidia-ml-py`, no driver, an older GPU) the result has no
figures and says why.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

import torch

from effbench.measure.timing import synchronize

MIN_WINDOW_S = 2.0  # seconds of calls in one window: many counter steps, whatever the GPU
MIN_UPDATES = 3  # counter steps inside the window, for a counter slower than documented
MIN_BLOCKS = 10  # blocks of calls in the window: a long call's share of the ends stays small
LONG_WINDOW_S = 20.0  # ... unless the window is this long already (calls of seconds)
BLOCK_S = 0.01  # calls between two readings of the counter, in seconds
STUCK_S = 5.0  # seconds of calls without a counter step before giving up
SOURCE = "nvml total energy counter"
INSTALL = "install the energy extra (pip install 'effbench[energy]': nvidia-ml-py)"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Energy:
    """What one function's calls cost in energy over the window: joules per call and per item
    (an image of a batch), mean watts, the window's seconds and calls; without figures,
    `reason` says why."""

    joules_per_call: float | None = None
    joules_per_item: float | None = None
    watts: float | None = None
    window_s: float | None = None
    calls: int = 0
    reason: str | None = None


def _nvml_ids(device: torch.device) -> list[str | int]:
    """NVML's names for a CUDA device, best first: its UUID from torch (which neither
    CUDA_VISIBLE_DEVICES nor CUDA's device order can change), then the CUDA_VISIBLE_DEVICES
    entry it stands for (an index or a UUID), or its index when that is unset."""
    index = device.index
    ids: list[str | int] = []
    try:
        if index is None:
            index = torch.cuda.current_device()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        ids.append(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    except Exception:  # no CUDA in this torch, or no UUID: NVML's own names are left
        pass
    index = index or 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    entry = visible[index] if index < len(visible) and visible[index] else str(index)
    ids.append(int(entry) if entry.isdigit() else entry)
    return ids


class EnergyMeter:
    """NVML's total-energy counter of one torch device. NVML is loaded and started on the
    first `open` (the module `nvml` when given, as tests give a fake one; else `pynvml`) and
    shut down on `close`; `reason` says why the counter cannot be read, or is None."""

    def __init__(self, device: torch.device, *, nvml: ModuleType | Any = None) -> None:
        self.device = device
        self.reason: str | None = None
        self._nvml = nvml
        self._handle: Any = None
        self._opened = False
        self._started = False

    def __enter__(self) -> EnergyMeter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> str | None:
        """Start NVML and find the device's counter, once; None when it can be read, else
        why not (never raises for a missing or unsupported counter)."""
        if not self._opened:
            self._opened = True
            self.reason = self._open()
            if self.reason is not None:
                self.close()
        return self.reason

    def _open(self) -> str | None:
        if self.device.type != "cuda":
            return f"energy needs an NVIDIA GPU (NVML); device is {self.device.type}"
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                return f"{INSTALL} to read the GPU's energy counter"
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as err:  # no driver, no library (a ROCm build's "cuda"), ...
            return f"NVML did not start: {err}"
        self._started = True
        try:
            self._handle = self._find_handle()
            nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except nvml.NVMLError_NotSupported:
            return "this GPU has no total-energy counter (NVML: not supported; Volta or newer)"
        except Exception as err:  # no such device, no permission, ...
            return f"NVML could not read the GPU's energy counter: {err}"
        return None

    def _find_handle(self) -> Any:
        nvml = self._nvml
        err: Exception | None = None
        for name in _nvml_ids(self.device):
            try:
                if isinstance(name, int):
                    return nvml.nvmlDeviceGetHandleByIndex(name)
                return nvml.nvmlDeviceGetHandleByUUID(name)
            except nvml.NVMLError as e:
                err = e
        assert err is not None
        raise err

    def close(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):  # shutting down is best effort
                self._nvml.nvmlShutdown()

    def read_mj(self) -> int:
        """The counter: millijoules since the driver loaded."""
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def measure(
        self,
        fn: Callable[[], Any],
        *,
        per_call_items: int = 1,
        min_window_s: float = MIN_WINDOW_S,
        clock: Clock = time.perf_counter,
        sync: Callable[[], None] | None = None,
    ) -> Energy:
        """Call fn over a window between two counter steps (module docstring); joules per
        call and per item, mean watts. `clock` and `sync` (CUDA synchronisation by
        default) are what tests replace."""
        if self.open() is not None:
            return Energy(reason=self.reason)
        sync = sync or partial(synchronize, self.device)
        try:
            return self._measure(fn, per_call_items, min_window_s, clock, sync)
        except self._nvml.NVMLError as err:
            return Energy(reason=f"NVML could not read the GPU's energy counter: {err}")

    def _measure(
        self,
        fn: Callable[[], Any],
        items: int,
        min_window_s: float,
        clock: Clock,
        sync: Callable[[], None],
    ) -> Energy:
        t = clock()
        fn()
        sync()
        call_s = clock() - t
        block = max(1, min(1000, int(BLOCK_S / call_s))) if call_s > 0 else 1

        def run_block() -> None:
            for _ in range(block):
                fn()
            sync()

        stuck = f"the GPU's energy counter did not move in {STUCK_S:g} s of calls"
        first, since = self.read_mj(), clock()
        while (start_mj := self.read_mj()) == first:  # the window opens at a step
            run_block()
            if clock() - since > STUCK_S:
                return Energy(reason=stuck)
        t0 = last_step = clock()
        blocks = updates = 0
        last_mj = start_mj
        while True:
            run_block()
            blocks += 1
            now_mj, now = self.read_mj(), clock()
            if now_mj < last_mj:
                return Energy(reason="the GPU's energy counter went back (driver reloaded?)")
            if now_mj == last_mj:
                if now - last_step > STUCK_S:
                    return Energy(reason=stuck)
                continue
            updates, last_mj, last_step = updates + 1, now_mj, now
            blocks_enough = blocks >= MIN_BLOCKS or now - t0 >= LONG_WINDOW_S
            if now - t0 >= min_window_s and updates >= MIN_UPDATES and blocks_enough:
                break
        joules, window, calls = (last_mj - start_mj) / 1e3, now - t0, blocks * block
        return Energy(
            joules_per_call=joules / calls,
            joules_per_item=joules / (calls * items),
            watts=joules / window,
            window_s=window,
            calls=calls,
        )


@dataclass(frozen=True)
class EnergyCall:
    """A measured phase's call for `energy_fields`: what one call does (`items`: images of a
    batch, or 1) and the unit its figure is per (`per`: "image", "step")."""

    fn: Callable[[], Any]
    items: int
    per: str


def energy_fields(
    calls: Mapping[str, EnergyCall],
    *,
    device: torch.device,
    enabled: bool | None,
    nvml: ModuleType | Any = None,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """A record's energy fields, each phase's call measured in turn, apart from its timings: per
    phase `<phase>_joules_per_<per>`, `<phase>_watts` and `<phase>_energy_window_s`, with
    `energy_source`; `energy_note` says why a figure is missing. `enabled` False measures
    nothing; None and True measure where NVML can (elsewhere the note says why). A call that
    raises here leaves its phase without figures, not the record failed."""
    if enabled is False:
        return {"energy_note": "not measured (energy off)"}
    fields: dict[str, Any] = {}
    notes: list[str] = []
    with EnergyMeter(device, nvml=nvml) as meter:
        for phase, call in calls.items():
            if meter.open() is not None:
                notes.append(meter.reason or "")
                break
            try:
                got = meter.measure(call.fn, per_call_items=call.items, clock=clock, sync=sync)
            except Exception as err:
                got = Energy(reason=f"the call failed: {type(err).__name__}: {err}"[:300])
            if got.reason is not None:
                notes.append(f"{phase}: {got.reason}")
                continue
            fields[f"{phase}_joules_per_{call.per}"] = got.joules_per_item
            fields[f"{phase}_watts"] = got.watts
            fields[f"{phase}_energy_window_s"] = got.window_s
    if fields:
        fields["energy_source"] = SOURCE
    if notes:
        fields["energy_note"] = "; ".join(notes)
    return fields
