"""CLLM4Rec throughput and table memory (issue "CLLM4Rec"): training tokens/s per phase for the
tiny random LM of the tests and for SmolLM2-135M, and the token tables' bytes per million
users + items at an LM's width.

Each phase is timed through the trainer's own epoch (``Trainer.train_epoch``: batches, loss,
backward, optimizer step) on MovieLens-small documents, ``--steps`` batches per phase after one
warm-up batch:

* ``content`` — C-step (content documents, the word head);
* ``collab`` — L-step (collaborative documents, the item head);
* ``finetune`` — RecLLM (masked prompts, the multinomial head).

Memory: the four tables (collaborative and content, users and items) in float32, their
gradients and Adam's two moments, measured on the run's tables and given per million entities
at the LM's width. The tables are replicated on every worker in this version (data parallel),
so a second worker holds the same bytes again.

    .venv/bin/python benchmarks/cllm4rec_throughput.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
DATA = {"source": "movielens", "path": str(ROOT.parent / "shared" / "data" /
                                           "movielens-latest-small"),
        "min_rating": 3, "rating_op": ">", "kcore": 5,
        "split": {"method": "user", "ratios": [0.8, 0.1, 0.1]}}


def config_of(lm: str, dtype: str, phase: str, batch: int, steps: int, **params: Any) -> Any:
    from recalign.config import Config

    return Config.model_validate({
        "data": DATA, "model": {"backbone": "cllm4rec", "params": {
            "lm": lm, "dtype": dtype, "max_tokens": 128, "max_text_tokens": 64,
            "phase": phase, **params}},
        "train": {"batch_size": batch, "steps_per_epoch": steps, "threads": 2,
                  "max_epochs": 1},
        "eval": {"protocol": "cllm4rec", "max_users": 50}})


def trainer_of(lm: str, dtype: str, phase: str, batch: int, steps: int, ds: Any,
               **params: Any) -> Any:
    from recalign.train.api import make_trainer

    return make_trainer(config_of(lm, dtype, phase, batch, steps, **params), ds)


def timed_epoch(tr: Any) -> dict[str, float]:
    task = tr.task
    tok0, t0 = task.tokens, time.perf_counter()
    tr.train_epoch()
    dt = time.perf_counter() - t0
    return {"tokens": task.tokens - tok0, "seconds": round(dt, 3),
            "tokens_per_s": round((task.tokens - tok0) / dt, 1)}


def measure(name: str, lm: str, dtype: str, batch: int, steps: int, ds: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"lm": name, "dtype": dtype, "batch": batch}
    for phase, params in (("content", {"warmup_epochs": 10}),
                          ("collab", {"content": "none", "lam": 0.0})):
        tr = trainer_of(lm, dtype, "pretrain", batch, 1, ds, **params)
        timed_epoch(tr)  # warm-up: first-call allocations
        tr.cfg.train.steps_per_epoch = steps
        out[phase] = timed_epoch(tr)
    # fine-tuning starts from a pretraining run: one step of it is enough to time RecLLM
    run = tempfile.mkdtemp(prefix="cllm4rec-tp-")
    from recalign.train.api import train

    train(config_of(lm, dtype, "pretrain", batch, 1, content="none", lam=0.0), ds, run_dir=run)
    tr = trainer_of(lm, dtype, "finetune", batch, 1, ds, init_from=run, content="none",
                    lam=0.0)
    timed_epoch(tr)
    tr.cfg.train.steps_per_epoch = steps
    out["finetune"] = timed_epoch(tr)
    m = tr.task.model
    rows = m.n_users + m.n_items
    params = sum(q.numel() for q in m.token_parameters())
    # float32 rows, their gradients and Adam's two moments once both sides have trained
    per_entity_dim = 4 * 4 * params / (rows * m.dim)
    out["memory"] = {"width": m.dim, "bytes_per_entity_per_dim": round(per_entity_dim, 2),
                     "gib_per_million_entities": round(per_entity_dim * m.dim * 1e6 / 2**30, 2),
                     "gib_per_million_at_576": round(per_entity_dim * 576 * 1e6 / 2**30, 2),
                     "gib_per_million_at_768": round(per_entity_dim * 768 * 1e6 / 2**30, 2)}
    return out


def main() -> int:
    from recalign.data.ingest import load_dataset
    from recalign.config import DataConfig
    from recalign.llm.models import prepare_default_model
    from recalign.models.cllm4rec import random_lm

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" /
                    "cllm4rec_throughput.json")
    args = ap.parse_args()
    smol = str(prepare_default_model())
    tiny = random_lm(Path(tempfile.mkdtemp(prefix="tinylm-")), smol)
    ds = load_dataset(DataConfig.model_validate(DATA))
    rows = [measure("tiny (random, 32 x 2)", tiny, "float32", args.batch, args.steps * 5, ds),
            measure("SmolLM2-135M", smol, "float32", args.batch, args.steps, ds),
            measure("SmolLM2-135M", smol, "bfloat16", args.batch, args.steps, ds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "args": {**vars(args), "out": str(args.out)}},
                                   indent=1))
    print(f"{'LM':<24}{'dtype':>10}{'content':>10}{'collab':>10}{'finetune':>10}  tokens/s")
    for r in rows:
        print(f"{r['lm']:<24}{r['dtype']:>10}" + "".join(
            f"{r[p]['tokens_per_s']:>10.0f}" for p in ("content", "collab", "finetune")))
    m = rows[-1]["memory"]
    print(f"tables + grads + Adam: {m['bytes_per_entity_per_dim']} bytes per entity and "
          f"dimension = {m['gib_per_million_at_576']} GiB per million users+items at width "
          f"576 (SmolLM2), {m['gib_per_million_at_768']} GiB at 768 (GPT-2), per worker")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
