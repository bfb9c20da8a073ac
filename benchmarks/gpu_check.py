"""One short script for a GPU machine that has torch with CUDA but no TorchRec, fbgemm or Ray:
what the trainer does on CUDA in this version, timed beside the CPU.

    python benchmarks/gpu_check.py                    # ~2-4 min on one GPU
    python benchmarks/gpu_check.py --users 20000 --items 12000

1. SASRec (task ``next-item``) through the trainer (``recalign.train.api.train``, what
   ``recalign train`` runs in-process) on CUDA and on the CPU: synthetic ordered sequences, a few
   epochs each; seconds per epoch, full-ranking evaluation time, HR@10 (the two devices train
   the same model and should land close, not bitwise equal).
2. The plain-torch table backend on CUDA: LightGCN's tables and propagation module, forward and
   backward steps (the pairwise task itself keeps its graph on the CPU in this version and
   refuses ``train.device: cuda``; this times what already runs there).
3. CLLM4Rec (task ``lm``): content, collaborative and fine-tuning steps through the trainer's
   epoch on a random Llama of GPT-2's size (768 x 12), tokens/s per phase — needs transformers
   and SmolLM2's two tokenizer files (``--tokenizer``).

Needs only torch, numpy, scipy, pyarrow, pydantic and pyyaml; asserts that torchrec, fbgemm_gpu
and ray are never imported. Prints a table and writes ``benchmarks/out/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Blocked(importlib.abc.MetaPathFinder):
    """Fail loudly if anything pulls in the stack this machine does not have."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001
        if name.split(".")[0] in ("torchrec", "fbgemm_gpu", "ray"):
            raise ImportError(f"gpu_check: {name} must not be needed on this path")
        return None


def sequences(n_users: int, n_items: int, length: int, seed: int):
    import numpy as np

    from recalign.data.sequences import SequenceData

    rng = np.random.default_rng(seed)
    start = rng.integers(n_items, size=n_users)
    steps = np.where(rng.random((n_users, length)) < 0.9, 1,
                     rng.integers(n_items, size=(n_users, length)))
    seqs = (start[:, None] + np.cumsum(steps, 1)) % n_items
    train = seqs[:, :-2]
    indptr = np.arange(0, n_users * (length - 2) + 1, length - 2, dtype=np.int64)
    return SequenceData(indptr, train.reshape(-1).astype(np.int64), seqs[:, -2].copy(),
                        seqs[:, -1].copy(), n_items)


def sasrec(device: str, data, epochs: int) -> dict:
    from recalign.config import Config
    from recalign.train.api import train

    cfg = Config.model_validate({"model": {"backbone": "sasrec"},
                                 "train": {"device": device, "max_epochs": epochs,
                                           "checkpoint_every": 0, "seed": 1}})
    t = time.perf_counter()
    r = train(cfg, data)
    ev = [h["eval_s"] for h in r["history"] if "eval_s" in h]
    return {"device": r["device"], "s_per_epoch": r["train_seconds"] / r["epochs"],
            "eval_s": sum(ev) / len(ev), "hr@10": r["test"]["hr@10"],
            "sequences_per_s": r["sequences_per_s"], "wall_s": time.perf_counter() - t}


def lightgcn_tables(device: str, n_users: int, n_items: int, steps: int) -> dict:
    import numpy as np
    import scipy.sparse as sp
    import torch

    from recalign.models.lightgcn import LightGCN

    rng = np.random.default_rng(0)
    nnz = n_users * 20
    m = sp.csr_matrix((np.ones(nnz, np.float32), (rng.integers(n_users, size=nnz),
                                                  rng.integers(n_items, size=nnz))),
                      shape=(n_users, n_items))
    model = LightGCN.build(m, {"dim": 64, "layers": 3}, table_backend="torch", device=device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    ids = torch.arange(min(4096, n_users), device=device)
    times = []
    ok = True
    for _ in range(steps):
        t = time.perf_counter()
        try:
            u, i = model.tables.all_rows()
            loss = (u[ids] * i[ids % n_items]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - report what fails, keep going
            return {"device": device, "error": f"{type(exc).__name__}: {exc}"}
        times.append(time.perf_counter() - t)
    return {"device": device, "table_step_s": sorted(times)[len(times) // 2], "ok": ok}


def cllm4rec(device: str, tokenizer: str, steps: int, hidden: int, layers: int) -> dict:
    """CLLM4Rec's three phases through the trainer's epoch on a random Llama of GPT-2's size
    (``hidden`` x ``layers``; tokens/s does not depend on the weights, and a bare GPU machine
    has no checkpoint to download): tokens/s per phase."""
    import tempfile

    from recalign.config import Config
    from recalign.data.ingest import load_dataset
    from recalign.models.cllm4rec import random_lm
    from recalign.train.api import make_trainer, train

    lm = random_lm(Path(tempfile.mkdtemp(prefix="gpu-lm-")), tokenizer, hidden=hidden,
                   layers=layers, context=1024)
    data = {"source": "synthetic", "synthetic": {"users": 400, "items": 300,
                                                 "interactions": 8000},
            "split": {"method": "user", "ratios": [0.8, 0.1, 0.1]}}

    def cfg(phase: str, **params) -> Config:
        return Config.model_validate({
            "data": data, "model": {"backbone": "cllm4rec", "params": {
                "lm": lm, "phase": phase, "max_tokens": 256, **params}},
            "train": {"device": device, "batch_size": 32, "steps_per_epoch": steps,
                      "max_epochs": 1, "checkpoint_every": 0},
            "eval": {"protocol": "cllm4rec", "max_users": 64}})

    ds = load_dataset(cfg("pretrain").data)
    out: dict = {"device": device, "lm": f"random llama {hidden} x {layers}"}
    run = tempfile.mkdtemp(prefix="gpu-cllm4rec-")
    try:
        train(cfg("pretrain", warmup_epochs=0), ds, run_dir=run)
        for phase, c in (("content", cfg("pretrain", warmup_epochs=10)),
                         ("collab", cfg("pretrain", content="none", lam=0.0)),
                         ("finetune", cfg("finetune", init_from=run))):
            tr = make_trainer(c, ds)
            tr.train_epoch()  # first-call allocations and kernels
            tok0, t = tr.task.tokens, time.perf_counter()
            tr.train_epoch()
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            out[f"{phase}_tokens_per_s"] = round((tr.task.tokens - tok0)
                                                 / (time.perf_counter() - t), 1)
    except Exception as exc:  # noqa: BLE001 - report what fails, keep going
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def main(argv: list[str] | None = None) -> int:
    sys.meta_path.insert(0, _Blocked())
    sys.path.insert(0, str(ROOT / "platform"))  # not installed on a bare GPU image
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check.json")
    ap.add_argument("--tokenizer", default=None, help="a folder with SmolLM2's tokenizer.json "
                    "and tokenizer_config.json for the CLLM4Rec check (default: the prepared "
                    "SmolLM2 folder, if any; carry the two files to a bare machine)")
    ap.add_argument("--lm-steps", type=int, default=20, help="CLLM4Rec batches per phase")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    info = {"torch": torch.__version__, "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None}
    print(json.dumps(info))
    data = sequences(args.users, args.items, 12, 0)
    tokenizer = args.tokenizer
    try:
        import transformers  # noqa: F401

        if tokenizer is None:
            from recalign.llm.models import default_cache_dir

            found = sorted(default_cache_dir().glob("smollm2-*/tokenizer.json"))
            tokenizer = str(found[-1].parent) if found else None
    except ImportError:
        tokenizer = None
    rows = []
    for dev in (["cuda", "cpu"] if cuda else ["cpu"]):
        rows.append({"what": "sasrec next-item", **sasrec(dev, data, args.epochs)})
        rows.append({"what": "lightgcn torch tables", **lightgcn_tables(
            dev, args.users, args.items, 5)})
        if tokenizer is not None:
            rows.append({"what": "cllm4rec phases", **cllm4rec(dev, tokenizer, args.lm_steps,
                                                               768, 12)})
    if tokenizer is None:
        print("cllm4rec: skipped (transformers missing or no tokenizer: --tokenizer DIR)")
    for r in rows:
        print(json.dumps(r))
    leaked = [m for m in sys.modules if m.split(".")[0] in ("torchrec", "fbgemm_gpu", "ray")]
    assert not leaked, leaked
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
