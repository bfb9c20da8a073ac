"""Progress a person can follow: plain lines with count/total, rate and ETA off a terminal, at
least one line per interval even when no update comes, a bar on a terminal, none when disabled;
and the jobs (ingest, train) really print them into a log."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from recalign.progress import LineProgress, progress

ROOT = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_report_count_total_rate_and_eta() -> None:
    buf = io.StringIO()
    bar = progress("profiles", "profiles", total=10, file=buf, interval=3600)
    assert isinstance(bar, LineProgress)
    time.sleep(0.05)
    bar.update(4)  # inside the interval: no line yet
    bar.set_postfix(ok=4, failed=0)
    bar.close()
    lines = buf.getvalue().splitlines()
    # one line when the stage opens, one with the final count at close — nothing in between
    assert len(lines) == 2, lines
    assert lines[0].startswith("profiles: 0/10 profiles (0%)")
    assert "ETA unknown" in lines[0]
    last = lines[1]
    assert last.startswith("profiles: 4/10 profiles (40%)")
    rate = float(re.search(r"([\d.]+) profiles/s", last).group(1))
    assert 4 / 5.0 < rate < 4 / 0.05 + 1  # 4 done in (0.05 s, a few s): the mean rate
    eta = re.search(r"ETA (\d\d):(\d\d)", last)
    assert eta is not None  # 6 left at that rate
    assert "failed=0, ok=4" in last
    assert "\r" not in buf.getvalue()  # a log, not terminal redraws


def _eta_s(line: str) -> int:
    m = re.search(r"ETA (\d\d):(\d\d)", line)
    assert m is not None, line
    return 60 * int(m.group(1)) + int(m.group(2))


def test_eta_counts_down_inside_a_long_item_and_a_resume_counts_only_its_own() -> None:
    """One epoch of a resumed run: 16 of 300 epochs were done before (``initial``); the rate
    is this run's (1 epoch in ~1 s, not 17), and while the next epoch runs the ETA falls with
    the time spent on it instead of rising as a mean over ever more elapsed time would."""
    buf = io.StringIO()
    bar = progress("train", "epochs", total=20, initial=16, file=buf, interval=3600)
    time.sleep(1.0)
    bar.update(1)  # epoch 17 of 20 done after ~1 s
    bar.refresh()
    first = bar._line()
    time.sleep(1.2)
    later = bar._line()
    bar.close()
    rate = float(re.search(r"([\d.]+) epochs/s", first).group(1))
    assert 0.5 < rate < 1.05, first  # 1 epoch/s, not 17
    assert _eta_s(first) in (2, 3)  # 3 epochs left at ~1 s each
    assert _eta_s(later) < _eta_s(first), (first, later)  # counting down, not growing
    assert "17/20 epochs" in later


def test_heartbeat_prints_while_no_update_comes() -> None:
    buf = io.StringIO()
    with progress("embed", "texts", total=100, file=buf, interval=0.2) as bar:
        bar.update(10)
        time.sleep(1.1)  # one long batch: the log must not stay silent
    lines = buf.getvalue().splitlines()
    heartbeats = [ln for ln in lines if ln.startswith("embed: 10/100 texts")]
    assert len(heartbeats) >= 3, lines
    assert lines[-1].startswith("embed: 10/100 texts (10%)")  # close prints the final count once
    assert len(lines) < 12  # bounded by the interval, not one line per poll


def test_terminal_gets_a_bar_and_disabled_prints_nothing(monkeypatch) -> None:
    tty = _Tty()
    bar = progress("x", "it", total=3, file=tty)
    assert type(bar) is tqdm and not bar.disable
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
    quiet = io.StringIO()
    with progress("x", "it", total=3, file=quiet, disable=True) as bar:
        bar.update(3)
    monkeypatch.setenv("RECALIGN_PROGRESS", "0")
    with progress("x", "it", total=3, file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def _job(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECALIGN_PROGRESS_INTERVAL": "0.05"}
    env.pop("RECALIGN_PROGRESS", None)
    return subprocess.run([sys.executable, "-m", "recalign.jobs.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_jobs_print_progress_lines_into_a_log(tmp_path: Path) -> None:
    sets = ["--set", "data.source=synthetic", "--set", "data.synthetic.users=120",
            "--set", "data.synthetic.items=80", "--set", "data.synthetic.interactions=1500", "--set", "data.split.method=user",
            "--set", f"output.root={tmp_path / 'root'}"]
    ing = _job(["ingest", *sets], tmp_path)
    assert ing.returncode == 0, ing.stderr
    rows = json.loads(ing.stdout.strip().splitlines()[-1])["counts"]
    total_rows = sum(rows.values()) if isinstance(rows, dict) else rows
    assert re.search(r"^ingest: [\d,]+ rows", ing.stderr, re.M), ing.stderr
    assert total_rows > 0
    tr = _job(["train", *sets, "--set", "train.max_epochs=4", "--set", "train.eval_every=2"],
              tmp_path)
    assert tr.returncode == 0, tr.stderr
    summary = json.loads(tr.stdout.strip().splitlines()[-1])
    done = [ln for ln in tr.stderr.splitlines() if ln.startswith("train: 4/4 epochs (100%)")]
    assert done, tr.stderr
    # the last line names the loss and the last validation, equal to the run's own figures
    best = summary["valid"]["recall@20"]
    assert f"best {best:.4f} @ {summary['best_epoch']}" in done[-1]
    assert re.search(r"loss \d+\.\d{4}", done[-1])
    test_line = [ln for ln in tr.stderr.splitlines() if ln.startswith("train: test, export: 2/2")]
    assert test_line and f"test recall@20 {summary['test']['recall@20']:.4f}" in test_line[-1]
    assert "unless it improves" not in tr.stderr  # patience 5 outlasts the 4-epoch cap


def test_the_epoch_line_says_where_early_stopping_ends_the_run() -> None:
    """Instead of an ETA to ``max_epochs`` (rarely reached), the epoch status names the epoch
    after which the run stops unless validation improves (``EarlyStopping.last_epoch``), and
    drops it once the cap comes first or the run is done."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_sequential import markov_sequences, seq_config

    from recalign.train.api import make_trainer

    cfg = seq_config(max_epochs=40)
    cfg.train.patience, cfg.train.eval_every, cfg.train.min_epochs = 3, 2, 0
    tr = make_trainer(cfg, markov_sequences(60, 20, 6, seed=3))
    sel = tr.select_metric()
    tr.stop.update(0.30, 4, {sel: 0.30})
    tr.stop.update(0.20, 6, {sel: 0.20})  # one validation without a gain
    rec = {"epoch": 7, "loss": 1.25}
    tr.history = [{"epoch": 6, "valid": {sel: 0.20}}, rec]
    status = tr._epoch_status(rec, sel)
    assert f"valid {sel} 0.2000, best 0.3000 @ 4, ends after epoch 10 unless it improves" \
        in status, status  # validations at 8 and 10 spend the last two of patience 3
    tr.cfg.train.max_epochs = 11
    assert "unless" not in tr._epoch_status(rec, sel)  # the cap ends it there anyway
    tr.cfg.train.max_epochs, tr.done = 40, True
    assert "unless" not in tr._epoch_status(rec, sel)


def test_a_failing_training_run_leaves_no_heartbeat_behind(monkeypatch) -> None:
    """A run that raises (an injected fault: the epoch, then the test evaluation) closes its
    progress lines: no heartbeat thread outlives it to print into the log forever."""
    import threading

    import pytest

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sequential import markov_sequences, seq_config

    from recalign.train.api import make_trainer

    monkeypatch.setenv("RECALIGN_PROGRESS_INTERVAL", "0.05")

    def beating() -> list[threading.Thread]:
        time.sleep(0.2)
        return [t for t in threading.enumerate()
                if t.name == "progress-heartbeat" and t.is_alive()]

    data = markov_sequences(60, 20, 6, seed=3)
    for where in ("epoch", "test"):
        tr = make_trainer(seq_config(max_epochs=1), data)
        if where == "epoch":
            monkeypatch.setattr(tr, "train_epoch", lambda: 1 / 0)
        else:
            real = tr.task.evaluate
            monkeypatch.setattr(tr.task, "evaluate",
                                lambda split: real(split) if split == "valid" else 1 / 0)
        with pytest.raises(ZeroDivisionError):
            tr.run()
        assert not beating(), where
