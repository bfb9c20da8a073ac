"""`recalign demo` at its edges: no vLLM installed (the transformers engine, said on stderr) and
a demo root that cannot be written (one-paragraph error, exit 2, nothing half-written)."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from recalign.jobs import demo


def test_without_vllm_the_demo_uses_transformers_and_says_so(monkeypatch, capsys,
                                                             tmp_path: Path) -> None:
    # deliberate fault injection: vLLM made unfindable, as on a machine without it
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    cfg = demo.demo_cfg(argparse.Namespace(root=str(tmp_path), overrides=[], config=None))
    assert cfg.llm.engine == "transformers"
    assert "vLLM is not installed: profiles use the transformers engine" in capsys.readouterr().err
    # with vLLM present the packaged config's engine stays
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("vllm") is not None:
        assert demo.demo_cfg(argparse.Namespace(root=str(tmp_path), overrides=[],
                                                config=None)).llm.engine == "vllm"


def test_unwritable_demo_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = blocker / "demo-root"
    proc = subprocess.run([sys.executable, "-m", "recalign.jobs.cli", "demo", "--root",
                           str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert err[-1].startswith("error: ") and str(root) in err[-1]
    assert "is a file, not a folder" in err[-1]
    assert blocker.read_text() == "not a folder"  # nothing written over it
