"""effbench.measure.energy against a fake NVML whose energy counter steps like a GPU's, on a
fake clock that only the measured calls move: joules per image and mean watts, a window of at
least 2 s that opens and closes on counter steps, a slow counter lengthening it, and the
reasons given where there is no counter (no waiting, no GPU, no model)."""

from __future__ import annotations

import math
import sys
from typing import Any

import pynvml
import pytest
import torch

from effbench.measure.energy import (
    LONG_WINDOW_S,
    MIN_UPDATES,
    MIN_WINDOW_S,
    STUCK_S,
    Energy,
    EnergyCall,
    EnergyMeter,
    _nvml_ids,
    energy_fields,
)
from effbench.results import ScaleRecord

CUDA = torch.device("cuda:0")  # only a name here: the fake NVML answers for it


def measure_energy(fn: Any, device: torch.device, **kwargs: Any) -> Energy:
    """fn's energy on `device`, NVML started and shut down around it (`nvml`, `clock` and
    `sync` are the meter's; the rest is `EnergyMeter.measure`'s)."""
    with EnergyMeter(device, nvml=kwargs.pop("nvml", None)) as meter:
        return meter.measure(fn, **kwargs)


@pytest.fixture(autouse=True)
def no_cuda_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever machine runs the tests, the device has no UUID from torch and
    CUDA_VISIBLE_DEVICES is unset, unless a test says otherwise."""

    def no_uuid(index: int) -> Any:
        raise RuntimeError("no CUDA here")

    monkeypatch.setattr(torch.cuda, "get_device_properties", no_uuid)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNvml:
    """The part of `pynvml` the meter uses: a GPU drawing `watts` whose counter steps every
    `step_s` seconds of the fake clock (millijoules, as NVML counts)."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported

    def __init__(
        self,
        clock: FakeClock,
        *,
        watts: float = 250.0,
        step_s: float = 0.05,
        supported: bool = True,
        init_error: Exception | None = None,
    ) -> None:
        self.clock, self.watts, self.step_s = clock, watts, step_s
        self.supported, self.init_error = supported, init_error
        self.running = 0
        self.handles: list[Any] = []

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.running += 1

    def nvmlShutdown(self) -> None:
        self.running -= 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.handles.append(index)
        return ("gpu", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self.handles.append(uuid)
        return ("gpu", uuid)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        if not self.supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        stepped = math.floor(self.clock.now / self.step_s) * self.step_s
        return int(stepped * self.watts * 1e3)


def test_the_fake_uses_the_real_modules_names() -> None:
    used = [n for n in vars(FakeNvml) if n.startswith(("nvml", "NVML"))]
    assert len(used) == 7
    assert all(hasattr(pynvml, n) for n in used), [n for n in used if not hasattr(pynvml, n)]


def calls_of(clock: FakeClock, seconds: float) -> tuple[Any, list[int]]:
    """A call that takes `seconds` of the fake clock, and the list its calls are counted in."""
    done: list[int] = []

    def fn() -> None:
        clock.now += seconds
        done.append(1)

    return fn, done


def test_joules_per_image_and_watts_over_a_window_of_two_seconds() -> None:
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=250.0, step_s=0.05)
    fn, done = calls_of(clock, 0.007)
    start = clock.now
    got = measure_energy(fn, CUDA, per_call_items=8, nvml=nvml, clock=clock, sync=lambda: None)
    assert got.reason is None
    assert got.window_s >= MIN_WINDOW_S
    assert got.window_s < MIN_WINDOW_S + 0.1  # closes at the first step after 2 s
    assert got.joules_per_call == pytest.approx(250.0 * 0.007, rel=0.01)
    assert got.joules_per_item == pytest.approx(250.0 * 0.007 / 8, rel=0.01)
    assert got.watts == pytest.approx(250.0, rel=0.01)
    assert got.calls * 0.007 == pytest.approx(got.window_s, abs=0.015)
    assert len(done) > got.calls  # the calls before the window opened are not counted
    assert clock.now - start < MIN_WINDOW_S + 0.2  # and they are few
    assert nvml.running == 0  # NVML shut down again
    assert nvml.handles == [0]  # no CUDA here: the index


def test_a_slow_counter_lengthens_the_window_to_its_steps() -> None:
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=80.0, step_s=0.9)
    fn, _ = calls_of(clock, 0.004)
    got = measure_energy(fn, CUDA, per_call_items=2, nvml=nvml, clock=clock, sync=lambda: None)
    assert got.reason is None
    # at least MIN_UPDATES steps, not just 2 s; the window opens and closes on steps
    assert got.window_s >= MIN_UPDATES * 0.9 - 0.01
    assert got.window_s == pytest.approx(round(got.window_s / 0.9) * 0.9, abs=0.01)
    assert got.joules_per_item == pytest.approx(80.0 * 0.004 / 2, rel=0.01)


def test_long_calls_run_in_a_longer_window() -> None:
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=300.0, step_s=0.1)
    fn, _ = calls_of(clock, 0.45)
    got = measure_energy(fn, CUDA, nvml=nvml, clock=clock, sync=lambda: None)
    assert got.calls >= 10 and got.window_s >= 10 * 0.45
    assert got.joules_per_call == pytest.approx(300.0 * 0.45, rel=0.05)


def test_a_counter_that_never_moves_gives_up_with_a_reason() -> None:
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=0.0)
    fn, _ = calls_of(clock, 0.01)
    got = measure_energy(fn, CUDA, nvml=nvml, clock=clock, sync=lambda: None)
    assert got.joules_per_call is None and "did not move" in got.reason
    assert clock.now - 1000.0 < STUCK_S + 1


def test_no_counter_no_gpu_no_nvml_are_reasons_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    fn, done = calls_of(clock, 0.01)
    old = FakeNvml(clock, supported=False)
    got = measure_energy(fn, CUDA, nvml=old, clock=clock)
    assert got.joules_per_call is None and "no total-energy counter" in got.reason
    assert "Volta" in got.reason and old.running == 0
    got = measure_energy(fn, torch.device("cpu"), nvml=FakeNvml(clock))
    assert got.reason == "energy needs an NVIDIA GPU (NVML); device is cpu"
    broken = FakeNvml(clock, init_error=pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    got = measure_energy(fn, CUDA, nvml=broken)
    assert got.reason == "NVML did not start: Driver Not Loaded"
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    got = measure_energy(fn, CUDA)
    assert "effbench[energy]" in got.reason and "nvidia-ml-py" in got.reason
    assert not done  # nothing was called


def test_cuda_visible_devices_maps_to_nvml_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,3")
    assert _nvml_ids(torch.device("cuda:1")) == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb")
    assert _nvml_ids(torch.device("cuda:1")) == ["GPU-bb"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _nvml_ids(torch.device("cuda:2")) == [2]

    class Props:
        uuid = "58111ddc-1111-2222-3333-444455556666"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    assert _nvml_ids(torch.device("cuda:0")) == ["GPU-58111ddc-1111-2222-3333-444455556666", 0]
    clock = FakeClock()
    nvml = FakeNvml(clock)
    with EnergyMeter(torch.device("cuda:0"), nvml=nvml) as meter:
        assert meter.reason is None
    assert nvml.handles == ["GPU-58111ddc-1111-2222-3333-444455556666"]


def test_record_fields_per_phase_and_the_reason_when_null() -> None:
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=200.0, step_s=0.02)
    infer, _ = calls_of(clock, 0.005)
    train, _ = calls_of(clock, 0.015)
    calls = {
        "infer": EnergyCall(infer, items=16, per="image"),
        "train": EnergyCall(train, items=1, per="step"),
    }
    hooks = {"nvml": nvml, "clock": clock, "sync": lambda: None}
    fields = energy_fields(calls, device=CUDA, enabled=None, **hooks)
    assert fields["infer_joules_per_image"] == pytest.approx(200.0 * 0.005 / 16, rel=0.01)
    assert fields["train_joules_per_step"] == pytest.approx(200.0 * 0.015, rel=0.01)
    assert fields["infer_watts"] == pytest.approx(200.0, rel=0.01)
    assert fields["train_energy_window_s"] >= MIN_WINDOW_S
    assert fields["energy_source"] == "nvml total energy counter"
    assert "energy_note" not in fields
    assert set(fields) <= set(ScaleRecord.model_fields)

    cpu = energy_fields(calls, device=torch.device("cpu"), enabled=None, **hooks)
    assert cpu == {"energy_note": "energy needs an NVIDIA GPU (NVML); device is cpu"}
    assert energy_fields(calls, device=CUDA, enabled=False, **hooks) == {
        "energy_note": "not measured (energy off)"
    }

    def fails() -> None:
        raise RuntimeError("boom")

    calls["infer"] = EnergyCall(fails, items=16, per="image")
    partial = energy_fields(calls, device=CUDA, enabled=True, **hooks)
    assert partial["energy_note"] == "infer: the call failed: RuntimeError: boom"
    assert "infer_joules_per_image" not in partial and partial["train_joules_per_step"] > 0


def test_the_scaling_section_shows_energy_only_where_measured() -> None:
    from report_records import scale

    from effbench.report.content import build_data
    from effbench.report.inputs import Results
    from effbench.report.sections import scaling

    def tables(records: list[dict[str, Any]]) -> dict[str, Any]:
        sec, _ = scaling.section(build_data(Results(records=records)))
        assert sec is not None
        return {b.title: b for b in sec.blocks if b.kind == "table"}

    plain = [scale(m, px) for m in ("sdpa", "linformer") for px in (32, 64)]
    assert not [t for t in tables(plain) if t.startswith("Energy")]
    measured = [
        scale(m, px, infer_joules_per_image=0.0123, infer_watts=201.0, energy_source="nvml")
        for m in ("sdpa", "linformer")
        for px in (32, 64)
    ]
    (energy,) = [b for t, b in tables(measured).items() if t.startswith("Energy")]
    assert energy.columns[3:] == ["J/image (infer)", "W (infer)", "J/step (train)", "W (train)"]
    assert energy.rows[0] == ["sdpa", "32", "17", "0.0123", "201", "-", "-"]
    assert len(energy.rows) == 4


def test_calls_of_seconds_stop_at_the_long_window() -> None:
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=300.0, step_s=0.1)
    fn, _ = calls_of(clock, 3.0)
    got = measure_energy(fn, CUDA, nvml=nvml, clock=clock, sync=lambda: None)
    assert got.calls < 10 and LONG_WINDOW_S <= got.window_s < LONG_WINDOW_S + 3.0
    assert got.joules_per_call == pytest.approx(300.0 * 3.0, rel=0.05)
