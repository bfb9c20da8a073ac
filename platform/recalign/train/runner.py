"""One CF training run for any world size: the same code in-process and in Ray Train workers.

The runner composes the loop pieces (:func:`recalign.train.loop.train_epoch`, the chunked
metrics) with an injected process-group view (:class:`recalign.train.dist.Dist`) and injected
checkpoint hooks, so it never imports Ray:

* **Tables.** World 1: the backbone's own :class:`~recalign.tables.IdTables` (fused fbgemm
  optimizer where the device supports it, else dense). World N: the tables are sharded by
  ``DistributedModelParallel`` (``train.sharding``: row-wise / table-wise hand-built fused
  plans, or the planner), initialised with the *same* rows as the world-1 run (the seeded
  unsharded init is copied into the shards), fbgemm fused optimizer. Dense parameters (an
  alignment's MLPs) are averaged over workers after backward, as DDP does.
* **Batches.** Every rank draws the same global epoch (same seed: negatives and order) and
  trains on its contiguous slice of each global batch of ``train.batch_size``; TorchRec
  averages row gradients over the world, so a step optimises the global batch's mean loss. A
  last global batch smaller than the world is dropped (at most ``workers - 1`` pairs an epoch).
* **Propagation.** ``full``: every rank propagates the full normalised adjacency over all rows
  (one sharded lookup of every row). ``sampled``: per batch, the k-hop fan-out neighbourhood
  of the rank's batch nodes (:mod:`recalign.data.subgraph`) — its rows looked up from the
  sharded tables with a batch size agreed across ranks — and the same backbone code propagates
  on the subgraph. Representations for evaluation/export in sampled mode are computed layer-wise
  over the full adjacency (exact; each rank computes a block of rows per layer).
* **Evaluation.** Users are split across ranks; each computes additive metric sums in user
  chunks (:func:`recalign.eval.metrics.ranking_sums`), the sums are all-reduced, then averaged.
* **Checkpoints** after validations (:mod:`recalign.train.checkpoint`): sharded tables and fused
  optimizer state through torch.distributed.checkpoint, loop state and best weights per rank.
* **Export**: each rank writes the final representations of the rows it owns
  (:mod:`recalign.train.export`); rank 0 commits the snapshot with metrics in the manifest.
"""

from __future__ import annotations

import inspect
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from recalign.config import Config
from recalign.data.sampler import BPRBatch, BPRSampler
from recalign.errors import ConfigError
from recalign.eval.metrics import RankingSums, finalize, get_protocol, ranking_sums
from recalign.tables.optim import (TableOptimizerSpec, dense_optimizer, fused_supported,
                                   resolve_kernel)
from recalign.train import checkpoint as ckpt
from recalign.train.curves import curves, plot_png
from recalign.train.dist import Dist
from recalign.train.export import (ExportTarget, commit_export, owned_ranges, write_rows)
from recalign.train.loop import CFData, seed_everything, train_epoch

log = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """Everything a worker needs (picklable: shipped to Ray Train workers)."""

    config: dict[str, Any]
    data: CFData
    user_keys: pa.Array
    item_keys: pa.Array
    run_dir: str
    export: ExportTarget | None = None
    manifest: dict[str, Any] = field(default_factory=dict)  # inputs, config_hash
    # {"root", "dataset", "artifact", "version"} of an embedding snapshot with layer-0 rows
    warm_start: dict[str, str] | None = None


@dataclass
class Hooks:
    """Checkpoint storage and progress reporting, provided by the caller (Ray or in-process).

    ``load`` returns a temporary local copy of the latest checkpoint (deleted after loading)
    or None; ``save(folder, epoch, metrics)`` persists a local checkpoint folder."""

    load: Callable[[], str | None] = lambda: None
    save: Callable[[str, int, dict[str, Any]], None] | None = None
    report: Callable[[dict[str, Any]], None] | None = None


class _Optim:
    """zero_grad/step over the dense (non-table) parameters; tables update in backward when fused."""

    def __init__(self, dense: torch.optim.Optimizer | None) -> None:
        self.dense = dense

    def zero_grad(self) -> None:
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.dense is not None:
            self.dense.step()


def backbone_params(cfg: Config) -> dict[str, Any]:
    """Backbone preset, then the alignment preset's backbone settings, then ``model.params``."""
    from recalign.models.registry import get_backbone

    cls = get_backbone(cfg.model.backbone)
    base = dict(getattr(cls, "PRESETS", {}).get(cfg.model.preset, {})) if cfg.model.preset else {}
    if cfg.align.method != "none":
        from recalign.align.presets import align_model_overrides

        base.update(align_model_overrides(cfg.align, cfg.model.backbone))
    merged = {**base, **cfg.model.params}
    params_cls = getattr(cls, "Params", None)
    return params_cls(**merged).model_dump() if params_cls is not None else merged


def model_meta(cfg: Config, n_users: int, n_items: int) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed."""
    p = backbone_params(cfg)
    return {"backbone": cfg.model.backbone, "dim": p.get("dim"), "n_users": int(n_users),
            "n_items": int(n_items), "workers": cfg.train.workers,
            "sharding": cfg.train.sharding if cfg.train.workers > 1 else None,
            "propagation": cfg.train.propagation.mode, "align": cfg.align.method}


def check_inputs(cfg: Config, data: CFData) -> None:
    """Bad input is an error before training starts."""
    cfg.model.check()
    get_protocol(cfg.eval.protocol)
    proto = get_protocol(cfg.eval.protocol)
    select = cfg.eval.select_metric or proto.select
    if select not in proto.metric_names:
        raise ConfigError(f"eval.select_metric {select!r} is not a {proto.name} metric "
                          f"({', '.join(proto.metric_names)})")
    if data.train.nnz == 0:
        raise ConfigError("the dataset has no training interactions")
    if data.valid is None or data.valid.nnz == 0:
        raise ConfigError("the validation split is empty: model selection and early stopping "
                          "need validation interactions (data.split)")
    no_train = np.flatnonzero((np.diff(data.train.indptr) == 0)
                              & ((np.diff(data.valid.indptr) > 0)
                                 | (np.diff(data.test.indptr) > 0 if data.test is not None
                                    else False)))
    if no_train.size:
        raise ConfigError(f"{no_train.size} users have validation/test interactions but no "
                          f"training items (e.g. ids {no_train[:5].tolist()}): a CF model has "
                          "nothing to learn for them; re-split the data (data.split) or filter "
                          "them (data.kcore)")
    t = cfg.train
    from recalign.models.registry import get_backbone

    cls = get_backbone(cfg.model.backbone)
    if t.workers > 1 and not cls.needs_semantic:  # a model without ID tables has no shards
        dev = "cuda" if t.use_gpu else "cpu"
        if not fused_supported(t.optimizer.name, dev) or t.optimizer.kernel == "dense":
            raise ConfigError(
                f"train.optimizer.name {t.optimizer.name!r}: sharded tables (train.workers > 1) "
                f"need an fbgemm fused optimizer, and on {dev} there is none for it (fused on "
                f"cpu: sgd, adagrad, rowwise_adagrad; on cuda also adam)")
    if cls.needs_semantic:  # the "semantic vectors only" ablation: no ID tables, no CF
        src = cfg.align.semantic
        if not (src.users and src.items):
            raise ConfigError(f"model.backbone {cfg.model.backbone}: ranks by semantic vectors "
                              "alone; set align.semantic.users and align.semantic.items")
        if cfg.align.method != "none":
            raise ConfigError(f"align.method {cfg.align.method}: model.backbone "
                              f"{cfg.model.backbone} has no CF representation to align; use "
                              "align.method none (or a CF backbone)")
        if t.warm_start:
            raise ConfigError(f"train.warm_start: model.backbone {cfg.model.backbone} has no "
                              "ID tables to start from earlier rows; set train.warm_start "
                              "false (in a nightly config: nightly.warm_start false)")
    if t.propagation.mode == "sampled":
        build = cls.build
        if "full_graph" not in inspect.signature(build).parameters:
            raise ConfigError(f"train.propagation.mode sampled: backbone "
                              f"{cfg.model.backbone!r} supports full propagation only")


def run_training(inp: RunInputs, d: Dist, hooks: Hooks | None = None) -> dict[str, Any] | None:
    """Train, evaluate, early-stop, checkpoint and export; rank 0 returns the summary."""
    from recalign.align.presets import build_from_config
    from recalign.data.idmap import IdMap
    from recalign.models.registry import get_backbone

    hooks = hooks or Hooks()
    cfg = Config.model_validate(inp.config)
    t, ev = cfg.train, cfg.eval
    data = inp.data
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    rng = seed_everything(t.seed)
    aux_rng = np.random.default_rng([t.seed, 7919, d.rank])  # neighbour sampling, per rank
    spec = TableOptimizerSpec(**t.optimizer.model_dump())
    sampled = t.propagation.mode == "sampled"
    params = backbone_params(cfg)
    dense_spec = spec.model_copy(update={"kernel": "dense"})
    kwargs = {"full_graph": False} if sampled else {}
    # built with the dense kernel first: the canonical seeded initial rows, which the fused or
    # sharded tables then receive, so every world size and kernel starts from the same rows
    cls = get_backbone(cfg.model.backbone)
    semantic = None
    if cls.needs_semantic:
        from recalign.align.semantic import load_semantic

        a = cfg.align
        semantic = load_semantic(a.semantic.users, a.semantic.items, IdMap(inp.user_keys),
                                 IdMap(inp.item_keys), shuffle=a.semantic_shuffle,
                                 seed=a.shuffle_seed)
        kwargs["semantic"] = semantic
    model = cls.build(data.train, params, optimizer=dense_spec, **kwargs)
    has_tables = model.tables is not None
    warm = None
    if inp.warm_start is not None:  # before any copy below: every path starts from these rows
        if not has_tables:
            raise ConfigError(f"warm start: model.backbone {cfg.model.backbone} has no ID "
                              "tables to start from layer-0 rows")
        from recalign.storage.snapshot import SnapshotStore
        from recalign.train.warm_start import apply_rows, read_warm_rows

        w = inp.warm_start
        snap = SnapshotStore(w["root"]).open(w["dataset"], w["artifact"], w["version"])
        warm = read_warm_rows(snap, inp.user_keys, inp.item_keys, int(params["dim"]))
        u0, i0 = model.tables.weights()
        apply_rows({"user": u0, "item": i0}, warm)
    if (not d.distributed and has_tables
            and model.tables.kernel != resolve_kernel(spec, d.device)):
        init = model.tables.weights()
        model = cls.build(data.train, params, optimizer=spec, **kwargs)
        with torch.no_grad():
            for (k, v), src in zip(sorted(model.tables.ebc.state_dict().items()),
                                   (init[1], init[0])):  # sorted keys: item, user
                v.copy_(src)
        assert torch.equal(model.tables.weights()[0], init[0])
    # DaRec's k-means centres: sums and counts all-reduced over the workers (same centres on
    # every rank); its row sampling is seeded per rank. Other alignments ignore these.
    dist_kw: dict[str, Any] = ({"reduce_fn": d.all_reduce, "rank": d.rank}
                               if d.distributed else {})
    align = build_from_config(cfg.align, model, user_map=IdMap(inp.user_keys),
                              item_map=IdMap(inp.item_keys), **dist_kw)
    if semantic is not None:  # the run summary counts entities without a vector
        align.summary = {**align.summary, "semantic": semantic.summary}
    proto = get_protocol(ev.protocol)
    select = ev.select_metric or proto.select
    nsampler = None
    if sampled:
        from recalign.data.subgraph import NeighbourSampler

        nsampler = NeighbourSampler(data.train, t.propagation.fanout, params.get("layers", 1),
                                    self_loops=cls.self_loops)

    dmp = None
    if d.distributed and has_tables:
        from recalign.tables.sharding import load_rows, shard_model

        u0, i0 = model.tables.weights()
        init = {"user": u0.clone(), "item": i0.clone()}
        dmp = shard_model(model, "tables.ebc", t.sharding, spec, pg=d.pg, device=d.device)
        load_rows(dmp, init)
        del init
        net = dmp.module
        table_ids = {id(p) for p in net.tables.ebc.parameters()}
        dense = [p for m in (net, align) for p in m.parameters() if id(p) not in table_ids]
        opt = _Optim(dense_optimizer(dense, spec))
        fused_opt = dmp.fused_optimizer
    else:  # one process, or a model without ID tables (data parallel: grads all-reduced)
        net = model
        fused_ids = net.tables.fused_parameter_ids() if has_tables else set()
        dense = [p for m in (net, align) for p in m.parameters() if id(p) not in fused_ids]
        opt = _Optim(dense_optimizer(dense, spec))
        fused_opt = net.tables.fused_optimizer() if has_tables else None
    dense_params = [p for p in dense if p.requires_grad]
    # DMP initialises the shards from torch's RNG: re-seed at the same point for every world
    # size, so edge dropout draws the same masks in a 1-worker and an N-worker run
    torch.manual_seed(t.seed + 1)

    def after_backward() -> None:
        if d.distributed:
            for p in dense_params:
                if p.grad is not None:
                    d.all_reduce(p.grad).div_(d.world)

    sampler = BPRSampler(data.train)
    n_users, n_items = data.n_users, data.n_items

    def rank_batches() -> Iterator[BPRBatch]:
        for step, b in enumerate(sampler.epoch(rng, t.batch_size)):
            n = len(b)
            if t.steps_per_epoch is not None and step >= t.steps_per_epoch:
                break
            if n < d.world:
                continue
            st["pairs"] += n
            lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
            sb = BPRBatch(b.users[lo:hi], b.pos[lo:hi], b.neg[lo:hi])
            if nsampler is not None:
                sb = nsampler.batch(sb, aux_rng)
                s = sb.subgraph
                s.lookup_batch = d.max_int(max(s.graph.n_users, s.graph.n_items))
            yield sb

    # ------------------------------------------------------------ state & checkpoints
    def sharded_state() -> dict[str, Any]:
        sd = dmp.state_dict() if dmp is not None else net.state_dict()
        out: dict[str, Any] = {"model": sd}
        if fused_opt is not None:
            out["optim"] = fused_opt.state_dict()
        return out

    def capture() -> dict[str, Any]:
        if dmp is not None:
            from recalign.tables.sharding import local_rows

            shards = {f"{tb}:{r0}:{c0}": s.detach().clone() for tb, r0, c0, s in local_rows(dmp)}
            other = {k: v.detach().clone() for k, v in net.named_parameters()
                     if id(v) not in table_ids}
            return {"shards": shards, "params": other,
                    "align": {k: v.clone() for k, v in align.state_dict().items()}}
        return {"model": {k: v.detach().clone() for k, v in net.state_dict().items()},
                "align": {k: v.clone() for k, v in align.state_dict().items()}}

    @torch.no_grad()
    def restore(state: dict[str, Any]) -> None:
        if dmp is not None:
            from recalign.tables.sharding import local_rows

            for tb, r0, c0, s in local_rows(dmp):
                s.copy_(state["shards"][f"{tb}:{r0}:{c0}"])
            named = dict(net.named_parameters())
            for k, v in state["params"].items():
                named[k].copy_(v)
        else:
            net.load_state_dict(state["model"])
        align.load_state_dict(state["align"])
        net.invalidate_cache()

    meta = model_meta(cfg, n_users, n_items)
    st: dict[str, Any] = {"epoch": 0, "history": [], "best": -math.inf, "best_epoch": -1,
                          "bad": 0, "best_metrics": None, "evals": 0, "best_state": None,
                          "train_s": 0.0, "eval_s": 0.0, "done": False, "pairs": 0}
    resumed_from = None
    folder = hooks.load()
    if folder is not None:
        ckpt.check_meta(folder, meta)
        sd = sharded_state()
        rs = ckpt.load_local(folder, d.rank, sd, d.distributed)
        (dmp or net).load_state_dict(sd["model"])
        if fused_opt is not None and "optim" in sd:
            fused_opt.load_state_dict(sd["optim"])
        if opt.dense is not None and rs.get("dense_optim") is not None:
            opt.dense.load_state_dict(rs["dense_optim"])
        align.load_state_dict(rs["align"])
        rng.bit_generator.state = rs["rng"]
        aux_rng.bit_generator.state = rs["aux_rng"]
        torch.set_rng_state(rs["torch_rng"])
        st.update(rs["loop"])
        resumed_from = st["epoch"]
        shutil.rmtree(folder, ignore_errors=True)  # a temporary local copy (Hooks.load)
        log.info("rank %d resumed at epoch %d", d.rank, st["epoch"])

    def save_checkpoint(metrics: dict[str, Any]) -> None:
        if hooks.save is None:
            return
        local = tempfile.mkdtemp(prefix=f"recalign-ckpt-r{d.rank}-")
        try:
            rank_state = {"loop": st, "rng": rng.bit_generator.state,
                          "aux_rng": aux_rng.bit_generator.state,
                          "torch_rng": torch.get_rng_state(),
                          "dense_optim": opt.dense.state_dict() if opt.dense is not None else None,
                          "align": align.state_dict()}
            ckpt.save_local(local, d.rank, sharded_state(), rank_state, meta, d.distributed)
            hooks.save(local, st["epoch"], metrics)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    # ------------------------------------------------------------ representations & metrics
    adj_block = None

    @torch.no_grad()
    def representations() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal adj_block
        net.eval()
        try:
            if not sampled:
                net.invalidate_cache()
                return net.eval_representations()
            # layer-wise exact inference over the full adjacency, a block of rows per rank
            n = n_users + n_items
            lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
            if adj_block is None:
                import scipy.sparse as sp

                a = sp.csr_matrix((nsampler.values, nsampler.indices, nsampler.indptr),
                                  shape=(n, n))
                adj_block = a[lo:hi]
            h = layer0_block(lo, hi)
            d.all_reduce(h)
            out = [h]
            for _ in range(params.get("layers", 0)):
                nxt = torch.zeros_like(h)
                nxt[lo:hi] = torch.from_numpy(np.asarray(adj_block @ h.numpy(), dtype=np.float32))
                d.all_reduce(nxt)
                h = nxt
                out.append(h)
            final = net.combine_layers(out)  # the backbone's own combination (sum, concat)
            return final[:n_users], final[n_users:]
        finally:
            net.train()

    def layer0_block(lo: int, hi: int) -> torch.Tensor:
        """[n_nodes, dim] zeros except rows lo..hi (looked up in chunks, collectively)."""
        n = n_users + n_items
        out = torch.zeros(n, int(params.get("dim")))
        ch = t.propagation.infer_chunk
        steps = d.max_int(math.ceil((hi - lo) / ch))
        for k in range(steps):
            s, e = min(hi, lo + k * ch), min(hi, lo + (k + 1) * ch)
            ids = torch.arange(s, e)
            us, its = ids[ids < n_users], ids[ids >= n_users] - n_users
            b = d.max_int(max(us.numel(), its.numel(), 1))
            u, i = net.tables.lookup(us, its, b)
            out[us] = u
            out[its + n_users] = i
        return out

    def eval_users(heldout: Any) -> np.ndarray:
        users = np.flatnonzero(np.diff(heldout.indptr) >= 0)
        if ev.max_users is not None and users.size > ev.max_users:
            users = np.sort(np.random.default_rng(t.seed).choice(users, ev.max_users,
                                                                 replace=False))
        return users[d.rank::d.world]

    def evaluate(heldout: Any, exclude: Any, reps: tuple[torch.Tensor, torch.Tensor]
                 ) -> dict[str, float]:
        u, i = reps
        sums = ranking_sums(lambda ids: u[ids] @ i.T, heldout, exclude, users=eval_users(heldout),
                            protocol=proto.name, chunk_size=ev.chunk_size)
        total = RankingSums.from_tensor(proto, d.all_reduce(sums.to_tensor()))
        return finalize(total)

    # ------------------------------------------------------------ epochs
    t_start = time.perf_counter()
    while not st["done"] and st["epoch"] < t.max_epochs:
        epoch = st["epoch"]
        t0 = time.perf_counter()
        losses = train_epoch(net, opt, sampler, rng, t.batch_size, align,
                             batches=rank_batches(), after_backward=after_backward)
        if d.distributed:
            keys = sorted(losses)
            vec = d.all_reduce(torch.tensor([losses[k] for k in keys], dtype=torch.float64))
            losses = {k: float(v) / d.world for k, v in zip(keys, vec.tolist())}
        t1 = time.perf_counter()
        st["train_s"] += t1 - t0
        rec: dict[str, Any] = {"epoch": epoch, **losses, "train_s": t1 - t0}
        st["epoch"] = epoch + 1
        if epoch % t.eval_every == 0:
            valid = evaluate(data.valid, data.train, representations())
            t2 = time.perf_counter()
            st["eval_s"] += t2 - t1
            rec["valid"], rec["eval_s"] = valid, t2 - t1
            if valid[select] > st["best"]:
                st.update(best=valid[select], best_epoch=epoch, bad=0, best_metrics=valid)
                st["best_state"] = capture()
            else:
                st["bad"] += 1
            st["evals"] += 1
            st["done"] = st["bad"] >= t.patience and epoch + 1 >= t.min_epochs
            log.info("epoch %d loss %.4f valid %s %.4f (best %.4f @ %d)", epoch,
                     losses.get("loss", float("nan")), select, valid[select], st["best"],
                     st["best_epoch"])
        if t.max_seconds is not None:  # every rank takes part: they must agree to stop
            late = time.perf_counter() - t_start > t.max_seconds
            st["done"] = st["done"] or d.max_int(int(late)) > 0
        st["history"].append(rec)
        if "valid" in rec and t.checkpoint_every and st["evals"] % t.checkpoint_every == 0:
            save_checkpoint({"epoch": epoch, select: rec["valid"][select]})
        elif hooks.report is not None:
            hooks.report({"epoch": epoch, **losses})

    # ------------------------------------------------------------ test & export
    if st["best_state"] is not None:
        restore(st["best_state"])
    reps = representations()
    t3 = time.perf_counter()
    test = None
    if data.test is not None and data.test.nnz:
        exclude = data.train
        if ev.mask_valid_at_test:
            exclude = (data.train + data.valid).tocsr()
        test = evaluate(data.test, exclude, reps)
    st["eval_s"] += time.perf_counter() - t3

    snapshot_uri = None
    export_s = None
    if inp.export is not None:
        t4 = time.perf_counter()
        parts = export_rows(inp, d, dmp, net, reps, n_users, n_items)
        all_parts = d.gather_objects(parts)
        export_s = time.perf_counter() - t4
        if d.rank == 0:
            extra = {"metrics": {"valid": st["best_metrics"], "test": test},
                     "best_epoch": st["best_epoch"], "epochs": st["epoch"],
                     "model": {"backbone": cfg.model.backbone, "preset": cfg.model.preset,
                               "params": params},
                     "align": cfg.align.method, "workers": d.world,
                     "propagation": t.propagation.mode, "dim": int(reps[0].shape[1])}
            snapshot_uri = commit_export(inp.export, all_parts, extra=extra,
                                         inputs=inp.manifest.get("inputs", {}),
                                         config_hash=inp.manifest.get("config_hash", ""))
        export_s = time.perf_counter() - t4
    import resource

    rss = d.gather_objects(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if d.rank != 0:
        return None
    c = curves(st["history"], select)
    summary = {"valid": st["best_metrics"], "test": test, "best_epoch": st["best_epoch"],
               "epochs": st["epoch"], "snapshot": snapshot_uri, "select_metric": select,
               "train_seconds": round(st["train_s"], 3), "eval_seconds": round(st["eval_s"], 3),
               "export_seconds": None if export_s is None else round(export_s, 3),
               "workers": d.world, "propagation": t.propagation.mode,
               "resumed_from_epoch": resumed_from, "run_dir": inp.run_dir,
               "pairs_trained": st["pairs"],
               "align": getattr(align, "summary", {"method": cfg.align.method}),
               "warm_start": None if warm is None else {"from": warm.source, **warm.counts},
               "pairs_per_s": round(st["pairs"] / st["train_s"], 1) if st["train_s"] else None,
               "peak_rss_mb": [round(x, 1) for x in rss]}
    write_run_files(inp.run_dir, c, summary)
    return summary


def export_rows(inp: RunInputs, d: Dist, dmp: Any, net: Any,
                reps: tuple[torch.Tensor, torch.Tensor],
                n_users: int, n_items: int) -> dict[str, Any]:
    """Write this rank's owned rows of the final representations; return its parts list."""
    shards: list[tuple[str, int, int, int]] = []
    if dmp is not None:
        from recalign.tables.sharding import local_rows

        shards = [(tb, r0, c0, int(s.shape[0])) for tb, r0, c0, s in local_rows(dmp)]
    names = d.gather_objects(sorted({s[0] for s in shards}))
    sharded_tables: set[str] = set().union(*map(set, names))
    ranges = owned_ranges(shards, {"user": n_users, "item": n_items}, d.rank, d.world,
                          sharded_tables)
    writer = inp.export.writer(d.rank)  # type: ignore[union-attr]
    # a model without ID tables (semantic-only) has no layer-0 rows: it exports its final
    # representations only, and a warm start from that snapshot says there are no layer-0 rows
    layer0 = layer0_tables(dmp, net) if net.tables is not None else None
    for table, rs in ranges.items():
        vecs = reps[0] if table == "user" else reps[1]
        keys = inp.user_keys if table == "user" else inp.item_keys
        for lo, hi in rs:
            write_rows(writer, table, lo, vecs[lo:hi], keys)
            if layer0 is not None:
                write_rows(writer, table, lo, layer0(table, lo, hi), keys, layer0=True)
    return writer.parts_written()


def layer0_tables(dmp: Any, net: Any) -> Callable[[str, int, int], torch.Tensor]:
    """``rows(table, lo, hi)``: this rank's layer-0 ID-table rows ``lo..hi`` (no communication:
    a rank exports only rows it owns, i.e. its own shards or a local/replicated table)."""
    if dmp is None:
        u, i = net.tables.weights()
        return lambda table, lo, hi: (u if table == "user" else i)[lo:hi]
    from recalign.tables.sharding import local_rows

    shards = [(tb, r0, s) for tb, r0, c0, s in local_rows(dmp) if c0 == 0]
    full = {}
    for key, value in dmp.state_dict().items():  # replicated (data-parallel) tables
        for tb in ("user", "item"):
            if key.endswith(f".{tb}.weight") and not hasattr(value, "local_shards"):
                full[tb] = value

    def rows(table: str, lo: int, hi: int) -> torch.Tensor:
        for tb, r0, s in shards:
            if tb == table and r0 <= lo and hi <= r0 + s.shape[0]:
                return s[lo - r0:hi - r0]
        return full[table][lo:hi]

    return rows


def write_run_files(run_dir: str, c: dict[str, Any], summary: dict[str, Any]) -> None:
    """curves.json, curves.png and result.json in the run folder (local or s3)."""
    import json

    from recalign.storage.uri import fsspec_filesystem

    fs, base = fsspec_filesystem(run_dir)
    fs.makedirs(base, exist_ok=True)
    with fs.open(f"{base}/curves.json", "w") as f:
        json.dump(c, f, indent=1)
    with fs.open(f"{base}/curves.png", "wb") as f:
        f.write(plot_png(c))
    with fs.open(f"{base}/result.json", "w") as f:
        json.dump(summary, f, indent=1, default=str)
