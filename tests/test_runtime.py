"""Precision choices that keep their word on every CPU (convae.runtime, convae.features.extract.run_precision)."""

import logging
from types import SimpleNamespace

import pytest
import torch

from convae import runtime
from convae.features import extract
from convae.runtime import resolve_precision, thread_limit

CPU = torch.device("cpu")


def test_bf16_on_a_cpu_without_native_bf16_warns_once_with_the_measured_cost(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
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


def test_thread_limit_restores_the_thread_count():
    before = torch.get_num_threads()
    with thread_limit(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with thread_limit(None):
        assert torch.get_num_threads() == before

