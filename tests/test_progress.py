"""Progress: a tqdm bar on a terminal, plain log lines (no ``\\r``) everywhere else, for every verb."""

import io
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from convae.progress import INTERVAL_ENV, Progress, default_interval, format_seconds

TINY = ["--data", "digits", "--epochs", "1", "--set", "model.channels=4", "--set", "model.latent_dim=4", "--limit", "200",
        "--threads", "1"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "convae.progress"]


# --- the helper --------------------------------------------------------------------------------------------
def test_not_a_terminal_logs_plain_lines_with_count_postfix_rate_and_time_left(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        bar = Progress(10, desc="train", unit="step", interval=0, file=stream)
        assert bar.mode == "log"
        for i in range(4):
            bar.set_postfix(epoch="1/2", loss=f"{0.5 - i / 10:.4f}")
            bar.update(1)
        bar.close()
        bar.close()  # a second close is nothing
    lines = progress_lines(caplog)
    assert len(lines) == 4 and stream.getvalue() == ""
    assert lines[0].startswith("train: 1/10 step (10%) epoch=1/2 loss=0.5000 | ")
    assert lines[-1].startswith("train: 4/10 step (40%) epoch=1/2 loss=0.2000 | ")
    assert all("step/s" in line and "elapsed" in line and "left" in line for line in lines)
    assert not any("\r" in line or "\n" in line for line in lines)


def test_lines_come_at_most_every_interval_and_at_flush_and_close(caplog):
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        bar = Progress(100, desc="extract", unit="img", interval=3600, file=io.StringIO())
        for _ in range(50):
            bar.update(2)
        assert progress_lines(caplog) == []  # within the interval: quiet
        bar.flush()
        bar.flush()  # nothing new since the last line: no second one
        bar.close()  # nor at close
    lines = progress_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("extract: 100/100 img (100%) | ") and "0:00 left" in lines[0]


def test_a_resumed_count_rates_only_the_new_units(caplog):
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        bar = Progress(10, unit="step", initial=6, interval=3600, file=io.StringIO())
        bar.close()  # no new step: no rate to tell
    assert progress_lines(caplog)[0].startswith("6/10 step (60%) | ? step/s")


def test_a_terminal_gets_a_tqdm_bar_and_no_log_lines(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        bar = Progress(10, desc="train", unit="step", interval=0, file=stream)
        assert bar.mode == "bar"
        bar.set_postfix(loss="0.1234")
        bar.update(10)
        bar.flush()
        bar.close()
    assert progress_lines(caplog) == []
    assert "train" in stream.getvalue() and "\r" in stream.getvalue()


def test_disabled_shows_nothing(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        for file in (stream, io.StringIO()):
            with Progress(5, enabled=False, interval=0, file=file) as bar:
                bar.update(5)
    assert progress_lines(caplog) == [] and stream.getvalue() == ""


def heartbeats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("convae-progress")]  # not tqdm's own monitor


def test_a_heartbeat_logs_while_no_update_comes_and_stops_at_close(caplog):
    assert heartbeats() == []
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        bar = Progress(12, desc="probe", unit="fit", interval=0.05, file=io.StringIO(), heartbeat=True)
        (beat,) = heartbeats()  # one thread, and a daemon: it never holds the process open
        assert beat.daemon and beat.is_alive()
        bar.set_postfix(set="convae:stage2/avg2", clf="rbf_svc")
        time.sleep(0.6)  # one long step: no update at all
        during = progress_lines(caplog)
        bar.close()
        assert not beat.is_alive()  # joined by close()
        closed = len(progress_lines(caplog))
        time.sleep(0.3)
    lines = progress_lines(caplog)
    assert len(during) >= 3, during
    assert all(line.startswith("probe: 0/12 fit (0%) set=convae:stage2/avg2 clf=rbf_svc | ? fit/s, ") for line in lines), lines
    assert len(lines) == closed  # nothing after close()


def test_a_heartbeat_counts_from_the_last_line_and_updates_still_log(caplog):
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        with Progress(3, desc="probe", unit="fit", interval=3600, file=io.StringIO(), heartbeat=True) as bar:
            for _ in range(3):
                bar.update(1)
            time.sleep(0.2)  # an interval of an hour: no heartbeat yet
            assert progress_lines(caplog) == []
    lines = progress_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("probe: 3/3 fit (100%) | ")


def test_no_heartbeat_thread_for_a_bar_when_disabled_or_with_interval_zero(caplog):
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        bars = [Progress(2, interval=0.05, file=Terminal(), heartbeat=True),  # a bar draws itself
                Progress(2, interval=0.05, enabled=False, file=io.StringIO(), heartbeat=True),
                Progress(2, interval=0, file=io.StringIO(), heartbeat=True)]  # 0: every update logs, no thread to spin
        assert [bar.mode for bar in bars] == ["bar", "off", "log"]
        assert heartbeats() == []
        time.sleep(0.2)
        assert progress_lines(caplog) == []
        for bar in bars:
            bar.close()


def test_interval_comes_from_the_environment(monkeypatch, caplog):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert default_interval() == 30
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert default_interval() == 0 and Progress(1, file=io.StringIO()).interval == 0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert default_interval() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with caplog.at_level(logging.WARNING, logger="convae.progress"):
            assert default_interval() == 30
        assert INTERVAL_ENV in caplog.text


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 4.6, 75.2, 3725)] == ["0:00", "0:05", "1:15", "1:02:05"]


def test_training_logs_a_line_at_every_epoch_end_whatever_the_interval(monkeypatch, caplog, blobs_npz):
    from convae.config import RunConfig, apply_overrides
    from convae.training import train

    monkeypatch.setenv(INTERVAL_ENV, "3600")
    cfg = apply_overrides(RunConfig(), [f"data.spec=npz:{blobs_npz}", "model.channels=4", "model.latent_dim=4", "train.epochs=2",
                                        "train.batch_size=64", "train.threads=1", "train.precision=fp32"])
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        train(cfg, None, progress=True)
    lines = progress_lines(caplog)
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"train: {3 * epoch}/6 step") and f"epoch={epoch}/2" in line, line
        assert "loss=" in line and "img_s=" in line and "val_mse=" in line and " left" in line


# --- every verb under the CLI, its stderr a pipe -------------------------------------------------------------
def convae(*args, interval="0", **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, INTERVAL_ENV: interval, "OMP_NUM_THREADS": "1", "CONVAE_NO_DOWNLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "convae", *args], capture_output=True, text=True, env=env, timeout=600, check=False,
                          **kwargs)  # stdout and stderr are pipes, as under CI or `| tee`


def assert_progress(stderr: str, prefix: str) -> list[str]:
    assert "\r" not in stderr
    lines = [line for line in stderr.splitlines() if "convae.progress" in line and f"{prefix}: " in line]
    assert lines, stderr
    return lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("progress") / "run"
    result = convae("train", *TINY, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run, result


def test_cli_train_prints_progress_lines_where_stderr_is_a_pipe(trained):
    _, result = trained
    lines = assert_progress(result.stderr, "train")
    assert "trained conv model" in result.stdout and "convae.progress" not in result.stdout
    last = lines[-1]
    for part in ("epoch=1/1", "loss=", "img_s=", "step/s", "elapsed", "left"):
        assert part in last, last
    total = last.split("/")[1].split()[0]
    assert f"train: {total}/{total} step (100%)" in last


def test_cli_extract_prints_progress_lines_where_stderr_is_a_pipe(trained, tmp_path):
    run, _ = trained
    result = convae("extract", str(run), "--out", str(tmp_path / "f.npy"), "--batch-size", "500")
    assert result.returncode == 0, result.stderr
    lines = assert_progress(result.stderr, "extract")
    assert any(line.startswith("INFO convae.progress: extract: 500/1797 img (28%)") for line in lines), lines
    assert "extract: 1797/1797 img (100%)" in lines[-1] and "img/s" in lines[-1] and "left" in lines[-1]


def test_cli_probe_prints_progress_lines_where_stderr_is_a_pipe(trained, tmp_path):
    run, _ = trained
    result = convae("probe", str(run), "--layers", "bottleneck", "--classifiers", "logreg", "--labels-per-class", "10",
                    "--seeds", "0", "--train-limit", "300", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = assert_progress(result.stderr, "convae features")
    assert "300/300 img (100%)" in lines[-1]


def test_cli_quiet_prints_no_progress(trained, tmp_path, monkeypatch, capsys, caplog):
    from convae.cli import main

    run, _ = trained
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        assert main(["extract", str(run), "--out", str(tmp_path / "f.npy"), "--batch-size", "500", "-q"]) == 0
        assert progress_lines(caplog) == []
        assert main(["extract", str(run), "--out", str(tmp_path / "f.npy"), "--batch-size", "500"]) == 0
        assert len(progress_lines(caplog)) == 4  # the same, without -q
    assert "\r" not in capsys.readouterr().err
