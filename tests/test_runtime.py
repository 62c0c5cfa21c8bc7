"""Precision choices that keep their word on every CPU (convae.runtime, convae.features.extract.run_precision)."""

import logging
from types import SimpleNamespace

import pytest
import torch

from convae import runtime
from convae.features import extract
from convae.errors import ConfigError
from convae.runtime import resolve_precision, thread_limit

CPU = torch.device("cpu")


def test_bf16_on_a_cpu_without_native_bf16_warns_once_with_the_measured_cost(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(runtime, "bf16_speedup", lambda: None)  # no AMX, no AVX-512-BF16: nothing measured
    monkeypatch.setattr(runtime, "_warned_slow_bf16", False)
    with caplog.at_level(logging.WARNING, logger="convae.runtime"):
        assert resolve_precision("bf16", CPU) == "bf16"
        assert resolve_precision("bf16", CPU) == "bf16"
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "11x slower than fp32" in warnings[0].getMessage()
    assert resolve_precision("auto", CPU) == "fp32"


def test_bf16_where_the_cpu_has_it_says_nothing(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(runtime, "_warned_slow_bf16", False)
    with caplog.at_level(logging.WARNING, logger="convae.runtime"):
        assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("auto", CPU) == "bf16"
    assert not [r for r in caplog.records if "emulated" in r.getMessage()]


@pytest.mark.parametrize("fast, expected", [(False, "fp32"), (True, "bf16")])
def test_a_bf16_run_extracts_in_the_precision_that_is_fast_here(monkeypatch, fast, expected):
    monkeypatch.setattr(extract, "cpu_has_fast_bf16", lambda: fast)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast)
    run = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(precision="bf16")))
    assert extract.run_precision(run, None, CPU) == expected
    assert extract.run_precision(run, "bf16", CPU) == "bf16"  # asked for: kept


@pytest.fixture
def fresh_measurement(monkeypatch):
    """bf16_speedup as at the start of a process: not yet measured, no override; the faked result is forgotten after."""
    runtime.bf16_speedup.cache_clear()
    monkeypatch.setattr(runtime, "_warned_slow_bf16", False)
    monkeypatch.delenv("CONVAE_BF16_SPEEDUP", raising=False)
    yield
    runtime.bf16_speedup.cache_clear()


@pytest.mark.parametrize("speedup, expected", [(0.69, "fp32"), (1.9, "bf16")])
def test_auto_follows_the_measured_bf16_speed_not_the_flags(monkeypatch, caplog, fresh_measurement, speedup, expected):
    # both CPUs say AVX-512-BF16; an Intel Xeon without AMX ran bf16 at 0.69x, an AMD EPYC at 1.9x
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: True)
    calls = []
    monkeypatch.setattr(runtime, "_measure_bf16_speedup", lambda: calls.append(1) or speedup)
    with caplog.at_level(logging.WARNING, logger="convae.runtime"):
        assert resolve_precision("auto", CPU) == expected
        assert resolve_precision("bf16", CPU) == "bf16"  # asked for: kept
    assert len(calls) == 1  # measured once per process
    warnings = [r.getMessage() for r in caplog.records if "not fast here" in r.getMessage()]
    if expected == "fp32":
        assert len(warnings) == 1 and "0.69x as fast as fp32" in warnings[0]
    else:
        assert not warnings


def test_without_bf16_flags_nothing_is_measured(monkeypatch, fresh_measurement):
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: False)
    monkeypatch.setattr(runtime, "_measure_bf16_speedup", lambda: pytest.fail("measured without native bf16"))
    assert runtime.bf16_speedup() is None and resolve_precision("auto", CPU) == "fp32"
    assert "emulated" in runtime.slow_bf16_note()


@pytest.mark.parametrize("isa, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_AMX", True)])
def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16(monkeypatch, isa, native):
    # ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16 on a CPU whose flags say AVX-512-BF16 (measured 0.08x fp32)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert runtime.cpu_bf16_flags() is native


def test_the_bf16_speed_can_be_given_instead_of_measured(monkeypatch, fresh_measurement):
    monkeypatch.setattr(runtime, "_measure_bf16_speedup", lambda: pytest.fail("measured despite CONVAE_BF16_SPEEDUP"))
    monkeypatch.setenv("CONVAE_BF16_SPEEDUP", "2.5")
    assert resolve_precision("auto", CPU) == "bf16"
    runtime.bf16_speedup.cache_clear()
    monkeypatch.setenv("CONVAE_BF16_SPEEDUP", "fast")
    with pytest.raises(ConfigError, match="CONVAE_BF16_SPEEDUP='fast' is not a number"):
        runtime.bf16_speedup()


def test_the_bf16_measurement_times_both_precisions_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    speedup = runtime._measure_bf16_speedup()  # runs on any CPU: emulated bf16 just gives a small ratio
    assert 0.01 < speedup < 100
    assert torch.equal(torch.rand(3), want)  # a run's seeded weights and batches do not depend on whether it measured


def test_thread_limit_restores_the_thread_count():
    before = torch.get_num_threads()
    with thread_limit(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with thread_limit(None):
        assert torch.get_num_threads() == before

