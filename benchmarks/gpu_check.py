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


def main(argv: list[str] | None = None) -> int:
    sys.meta_path.insert(0, _Blocked())
    sys.path.insert(0, str(ROOT / "platform"))  # not installed on a bare GPU image
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check.json")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    info = {"torch": torch.__version__, "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None}
    print(json.dumps(info))
    data = sequences(args.users, args.items, 12, 0)
    rows = []
    for dev in (["cuda", "cpu"] if cuda else ["cpu"]):
        rows.append({"what": "sasrec next-item", **sasrec(dev, data, args.epochs)})
        rows.append({"what": "lightgcn torch tables", **lightgcn_tables(
            dev, args.users, args.items, 5)})
    for r in rows:
        print(json.dumps(r))
    leaked = [m for m in sys.modules if m.split(".")[0] in ("torchrec", "fbgemm_gpu", "ray")]
    assert not leaked, leaked
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
