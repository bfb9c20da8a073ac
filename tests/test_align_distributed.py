"""DaRec on 2 gloo processes: each samples its own rows, the k-means centres stay identical."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.distributed as dist
from gloo_ranks import spawn_ranks


def _worker(rank: int, world: int, out_dir: str) -> None:
    from recalign.align.darec import DaRec
    from recalign.align.semantic import from_arrays
    from recalign.data.sampler import BPRBatch
    from recalign.models.base import RecOutput

    # same semantic vectors and the same initial heads on both ranks (as DDP would have)
    rng = np.random.default_rng(0)
    sem = from_arrays(rng.standard_normal((60, 12)), rng.standard_normal((40, 12)))
    torch.manual_seed(0)
    dr = DaRec(sem, dim=8, params=DaRec.Params(n_sample=32, k=5, width=6, seed=11),
               group=dist.group.WORLD)
    opt = torch.optim.Adam(dr.parameters(), lr=1e-2)
    torch.manual_seed(100 + rank)  # each rank's CF representations differ
    reps = torch.randn(100, 8, requires_grad=True)
    b = BPRBatch(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    sampled, losses = [], []
    for _ in range(6):
        opt.zero_grad()
        idx_state = dr._gen.get_state()
        sampled.append(sorted(dr.sample().tolist()))
        dr._gen.set_state(idx_state)  # forward draws the same rows
        out = RecOutput({}, reps[:1], reps[60:61], reps[61:62], reps[:60], reps[60:], b)
        loss = sum(dr(out).values())
        loss.backward()
        opt.step()
        losses.append(float(loss))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"c": dr.km_c.centres.tolist(), "l": dr.km_l.centres.tolist(),
                   "counts_c": dr.km_c.counts.tolist(), "sampled": sampled,
                   "losses": losses}, f)


def test_darec_centres_identical_on_two_ranks(tmp_path) -> None:
    spawn_ranks(_worker, 2, 2, str(tmp_path))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["c"] == r1["c"] and r0["l"] == r1["l"]  # bitwise identical
    assert r0["counts_c"] == r1["counts_c"]
    # the global counts include both ranks' rows: 6 updates x 2 ranks x 32 rows, decayed
    want = sum(64 * 0.9 ** j for j in range(6))
    assert sum(r0["counts_c"]) == __import__("pytest").approx(want, rel=1e-5)
    assert r0["sampled"] != r1["sampled"]  # each worker drew its own rows
    assert all(np.isfinite(r0["losses"])) and all(np.isfinite(r1["losses"]))
    assert np.array(r0["c"]).std() > 0
