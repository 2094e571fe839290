"""effbench.measure: SDPA backends from kernel names, the profiler's time by part, peak-memory
events, and the precision names' autocast."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from effbench.config.attention import SdpaConfig
from effbench.config.spec import Backbone
from effbench.measure import (
    DTYPES,
    MIB,
    PRECISIONS,
    autocast,
    autocast_dtype,
    peak_from_events,
    peak_memory,
    reset_peak_memory,
    time_call,
)
from effbench.measure.dispatch import backend_from_kernels
from effbench.measure.memory import CLEAR_REFS
from effbench.measure.profiler import PARTS, breakdown, labelled, native_noise_filtered
from effbench.model import build_model

# ---------------------------------------------------------------------------- dispatch


def test_sdpa_backend_from_cuda_kernel_names() -> None:
    flash = "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<32, 128, 128, 4>>"
    efficient = "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)"
    cudnn = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128"
    assert backend_from_kernels(["ampere_sgemm_128x64_tn", flash]) == "flash"
    assert backend_from_kernels([efficient]) == "efficient"
    assert backend_from_kernels([cudnn, "elementwise_kernel"]) == "cudnn"
    assert backend_from_kernels(["ampere_bf16_s16816gemm", "softmax_warp_forward"]) is None


# ---------------------------------------------------------------------------- memory


def test_peak_is_the_highest_running_total_in_time_order() -> None:
    assert MIB == 2**20
    assert peak_from_events([(3, -100), (1, 100), (2, 50)]) == 150
    assert peak_from_events([(1, -10)]) == 0
    assert peak_from_events([]) == 0


# ---------------------------------------------------------------------------- precision


def test_precision_names_of_both_tables_give_one_autocast() -> None:
    assert set(DTYPES) == {"float32", "bfloat16", "float16"}
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16"}
    assert autocast_dtype("float32") is None and autocast_dtype("fp32") is None
    assert autocast_dtype("bfloat16") == autocast_dtype("bf16") == torch.bfloat16
    assert autocast_dtype("float16") == autocast_dtype("fp16") == torch.float16
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu, "float32"), contextlib.nullcontext)
    a = torch.randn(4, 4)
    with autocast(cpu, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with pytest.raises(KeyError):
        autocast_dtype("half")


# ---------------------------------------------------------------------------- profiler


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread, leaving a core to the profiler's own thread (on a 2-core machine
    the two would otherwise contend and the profiled time read high)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_breakdown_parts_are_non_negative_and_sum_to_the_step_time() -> None:
    bb = Backbone(image_size=64, patch_size=4, dim=128, depth=2, heads=2)
    model = build_model(bb, SdpaConfig()).eval()
    x = torch.randn(32, 3, 64, 64)  # ~100 ms a call: the profiler's own cost is a few percent
    cpu = torch.device("cpu")

    def fwd() -> Tensor:
        with torch.inference_mode():
            return model(x)

    # interleaved, so that a slow spell of a shared machine hits both alike
    runs, timed = [], []
    for _ in range(3):
        runs.append(breakdown(fwd, model=model, device=cpu))
        timed.append(time_call(fwd, device=cpu, min_run_time=0.2).median_ms)
    for b in runs:
        assert set(b.parts_ms) == {*PARTS, "other"}
        assert all(v >= 0 for v in b.parts_ms.values()), b.parts_ms
        assert all(b.parts_ms[p] > 0 for p in PARTS), b.parts_ms
        assert sum(b.parts_ms.values()) == pytest.approx(b.step_ms)
        assert b.source == "CPU time" and b.top_ops
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" in b.op_names
    # The breakdown times the step it was given, not a multiple or a fraction of it. This is a
    # check of units and of what is counted, not a timing target: a shared machine drifts by
    # 20 % between calls, so the bound is wide (double counting or a missed block lies outside
    # it). Noise only ever adds time, so the fastest of each is compared.
    ratio = min(b.step_ms for b in runs) / min(timed)
    assert 0.6 < ratio < 1.6, (runs, timed)
    # the labels are gone afterwards
    assert all("forward" not in vars(m) for m in model.modules())
    with labelled(model):
        assert "forward" in vars(model.blocks[0].attn)
    assert "forward" not in vars(model.blocks[0].attn)


@pytest.mark.skipif(not Path(CLEAR_REFS).exists(), reason="needs Linux's /proc/self/clear_refs")
def test_cpu_peak_resets_so_a_smaller_job_after_a_bigger_one_reports_its_own_peak() -> None:
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * MIB // 4)  # 64 MiB, touched
    big_peak, source = peak_memory(cpu)
    del big
    reset_peak_memory(cpu)
    small = torch.ones(8 * MIB // 4)
    small_peak, again = peak_memory(cpu)
    del small
    assert source == again == "peak_rss_since_reset"
    assert big_peak is not None and small_peak is not None
    assert small_peak < big_peak - 40  # the 64 MiB job's peak did not carry over


def test_native_profiler_noise_is_dropped_and_other_stderr_kept(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with native_noise_filtered():
        os.write(2, b"USDT:... SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"ERROR:... gpuGetDeviceCount failed with code 35\n")
        os.write(2, b"a real warning\n")
    assert capfd.readouterr().err == "a real warning\n"


def test_a_cpu_profile_prints_no_cuda_or_profiler_noise(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(
        '[backbone]\ndim = 32\nheads = 2\n[[models]]\nname = "sdpa"\n'
        'attention = { kind = "sdpa" }\n[profile]\nseq_lens = [17]\nbatch_size = 2\n'
        'device = "cpu"\nmin_run_time = 0.01\nrepeats = 1\nbreakdown = true\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "effbench", "profile", "-s", str(spec), "-o", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr
    for noise in ("USDT", "profiler_start", "gpuGetDeviceCount", "No CUDA runtime"):
        assert noise not in done.stderr and noise not in done.stdout
