"""Task ``pairwise``: BPR collaborative filtering with any CF backbone and any alignment.

* **Tables.** World 1: the backbone's own :class:`~recalign.tables.IdTables` (fused fbgemm
  optimizer where the device supports it, else dense). World N: the tables are sharded by
  ``DistributedModelParallel`` (``train.sharding``: row-wise / table-wise hand-built fused
  plans, or the planner), initialised with the *same* rows as the world-1 run (the seeded
  unsharded init is copied into the shards), fbgemm fused optimizer. Dense parameters (an
  alignment's MLPs) are averaged over ranks after backward by the trainer, as DDP does.
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
* **Evaluation.** Full ranking over all items with the training items masked; users split over
  ranks, additive metric sums all-reduced (:mod:`recalign.train.evaluation`).
* **Export**: each rank writes the final representations of the rows it owns, and the layer-0
  rows (warm starts) (:mod:`recalign.train.export`).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch

from recalign.config import Config
from recalign.data.sampler import BPRBatch, BPRSampler
from recalign.errors import ConfigError
from recalign.eval.metrics import get_protocol
from recalign.tables.optim import (TableOptimizerSpec, fused_state, fused_supported,
                                   load_fused_state)
from recalign.train.data import CFData
from recalign.train.evaluation import eval_users, ranking_metrics
from recalign.train.optimizers import Optimizers
from recalign.train.tasks.base import Task


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


class PairwiseTask(Task):
    name = "pairwise"
    # the graph backbones keep their adjacency and samplers on the CPU in this version
    devices = ("cpu",)
    data_type = CFData
    units = "pairs"

    # ------------------------------------------------------------------ driver side
    @classmethod
    def meta(cls, cfg: Config, data: CFData) -> dict[str, Any]:
        p = backbone_params(cfg)
        return {"task": cls.name, "backbone": cfg.model.backbone, "dim": p.get("dim"),
                "n_users": int(data.n_users), "n_items": int(data.n_items),
                "propagation": cfg.train.propagation.mode, "align": cfg.align.method}

    @classmethod
    def check(cls, cfg: Config, data: CFData) -> None:
        if data.train.nnz == 0:
            raise ConfigError("the dataset has no training interactions")
        if data.valid is None or data.valid.nnz == 0:
            raise ConfigError("the validation split is empty: model selection and early "
                              "stopping need validation interactions (data.split)")
        no_train = np.flatnonzero((np.diff(data.train.indptr) == 0)
                                  & ((np.diff(data.valid.indptr) > 0)
                                     | (np.diff(data.test.indptr) > 0 if data.test is not None
                                        else False)))
        if no_train.size:
            raise ConfigError(f"{no_train.size} users have validation/test interactions but no "
                              f"training items (e.g. ids {no_train[:5].tolist()}): a CF model "
                              "has nothing to learn for them; re-split the data (data.split) "
                              "or filter them (data.kcore)")
        t = cfg.train
        from recalign.models.registry import get_backbone

        bb = get_backbone(cfg.model.backbone)
        if t.workers > 1 and not bb.needs_semantic:  # a model without ID tables has no shards
            dev = "cuda" if t.use_gpu else "cpu"
            if not fused_supported(t.optimizer.name, dev) or t.optimizer.kernel == "dense":
                raise ConfigError(
                    f"train.optimizer.name {t.optimizer.name!r}: sharded tables (train.workers "
                    f"> 1) need an fbgemm fused optimizer, and on {dev} there is none for it "
                    "(fused on cpu: sgd, adagrad, rowwise_adagrad; on cuda also adam)")
        if bb.needs_semantic:  # the "semantic vectors only" ablation: no ID tables, no CF
            src = cfg.align.semantic
            if not (src.users and src.items):
                raise ConfigError(f"model.backbone {cfg.model.backbone}: ranks by semantic "
                                  "vectors alone; set align.semantic.users and "
                                  "align.semantic.items")
            if cfg.align.method != "none":
                raise ConfigError(f"align.method {cfg.align.method}: model.backbone "
                                  f"{cfg.model.backbone} has no CF representation to align; "
                                  "use align.method none (or a CF backbone)")
            if t.warm_start:
                raise ConfigError(f"train.warm_start: model.backbone {cfg.model.backbone} has "
                                  "no ID tables to start from earlier rows; set "
                                  "train.warm_start false (in a nightly config: "
                                  "nightly.warm_start false)")
        if t.tables == "torch" and t.workers > 1 and not bb.needs_semantic:
            raise ConfigError("train.tables torch: plain-torch tables live in one process; "
                              "sharded tables over train.workers > 1 need train.tables torchrec")
        if t.propagation.mode == "sampled":
            if "full_graph" not in inspect.signature(bb.build).parameters:
                raise ConfigError(f"train.propagation.mode sampled: backbone "
                                  f"{cfg.model.backbone!r} supports full propagation only")

    # ------------------------------------------------------------------ worker side
    def build(self) -> Optimizers:
        from recalign.align.presets import build_from_config
        from recalign.data.idmap import IdMap
        from recalign.models.registry import get_backbone

        cfg, inp, d = self.cfg, self.inp, self.d
        t = cfg.train
        if d.device.type not in self.devices:
            raise ConfigError(f"train.device {d.device}: the CF backbones keep their graph on "
                              "the CPU in this version; train them with train.device cpu")
        data: CFData = inp.data
        self.data = data
        self.aux_rng = np.random.default_rng([t.seed, 7919, d.rank])  # neighbour sampling
        spec = TableOptimizerSpec(**t.optimizer.model_dump())
        self.sampled = sampled = t.propagation.mode == "sampled"
        self.params = params = backbone_params(cfg)
        dense_spec = spec.model_copy(update={"kernel": "dense"})
        kwargs: dict[str, Any] = {"full_graph": False} if sampled else {}
        cls = get_backbone(cfg.model.backbone)
        if t.tables != "torchrec" and not cls.needs_semantic:
            kwargs["table_backend"] = t.tables
        self.semantic = None
        a = cfg.align
        if cls.needs_semantic:
            if inp.semantic is not None:
                self.semantic = (inp.semantic.shuffle(a.shuffle_seed)
                                 if a.semantic_shuffle and not inp.semantic.shuffled
                                 else inp.semantic)
            else:
                from recalign.align.semantic import load_semantic

                self.semantic = load_semantic(a.semantic.users, a.semantic.items,
                                              IdMap(inp.user_keys), IdMap(inp.item_keys),
                                              shuffle=a.semantic_shuffle, seed=a.shuffle_seed)
            kwargs["semantic"] = self.semantic
        else:
            # tables on the meta device: no rows anywhere yet; each rank materialises only the
            # rows it owns below, and the model's other parameters draw the same random numbers
            # whatever the world size
            kwargs["device"] = "meta"
        model = cls.build(data.train, params, optimizer=dense_spec, **kwargs)
        has_tables = model.tables is not None
        self.warm = None
        if inp.warm_start is not None:
            if not has_tables:
                raise ConfigError(f"warm start: model.backbone {cfg.model.backbone} has no ID "
                                  "tables to start from layer-0 rows")
            from recalign.storage.snapshot import SnapshotStore
            from recalign.train.warm_start import read_warm_rows

            w = inp.warm_start
            snap = SnapshotStore(w["root"]).open(w["dataset"], w["artifact"], w["version"])
            self.warm = read_warm_rows(snap, inp.user_keys, inp.item_keys, int(params["dim"]))
        self.dmp = None
        self.table_ids: set[int] = set()
        if has_tables and d.distributed:
            from recalign.tables.sharding import shard_model

            bounds = table_bounds(model.tables)
            self.dmp = shard_model(model, "tables.ebc", t.sharding, spec, pg=d.pg,
                                   device=d.device, local_size=d.local_world)
            init_shards(self.dmp, bounds, t.seed, self.warm)
            model = self.dmp.module
            self.table_ids = {id(p) for p in model.tables.ebc.parameters()}
        elif has_tables:
            from recalign.tables import make_id_tables

            meta = model.tables
            model.tables = make_id_tables(meta.n_users, meta.n_items, meta.dim, optimizer=spec,
                                          device=d.device, backend=t.tables)
            init_full(model.tables, t.seed, self.warm)
            self.table_ids = model.tables.fused_parameter_ids()
        # DaRec's k-means centres: sums and counts all-reduced over the ranks (same centres on
        # every rank); its row sampling is seeded per rank. Other alignments ignore these.
        dist_kw: dict[str, Any] = ({"reduce_fn": d.all_reduce, "rank": d.rank}
                                   if d.distributed else {})
        dist_kw["device"] = d.device  # bf16 "auto" resolves where training runs
        self.align = align = build_from_config(cfg.align, model, user_map=IdMap(inp.user_keys),
                                               item_map=IdMap(inp.item_keys),
                                               semantic=inp.semantic, **dist_kw)
        if self.semantic is not None:  # the run summary counts entities without a vector
            align.summary = {**align.summary, "semantic": self.semantic.summary}
        self.nsampler = None
        if sampled:
            from recalign.data.subgraph import NeighbourSampler

            self.nsampler = NeighbourSampler(data.train, t.propagation.fanout,
                                             params.get("layers", 1), self_loops=cls.self_loops)
        net = self.dmp.module if self.dmp is not None else model
        fused_opt = (self.dmp.fused_optimizer if self.dmp is not None
                     else net.tables.fused_optimizer() if has_tables else None)
        self.net = net
        self.has_tables = has_tables
        dense = [p for m in (net, align) for p in m.parameters() if id(p) not in self.table_ids]
        # building tables draws from torch's RNG differently per world size: re-seed at the
        # same point for every world size, so edge dropout draws the same masks in a 1-rank
        # and an N-rank run
        torch.manual_seed(t.seed + 1)
        self.sampler = BPRSampler(data.train)
        self.proto = get_protocol(cfg.eval.protocol)
        self._adj_block = None
        self.fused_opt = fused_opt
        return Optimizers(dense, spec, fused_opt)

    def modules(self) -> list[torch.nn.Module]:
        return [self.net, self.align]

    def batches(self) -> Iterator[BPRBatch]:
        t, d = self.cfg.train, self.d
        for step, b in enumerate(self.sampler.epoch(self.rng, t.batch_size)):
            n = len(b)
            if t.steps_per_epoch is not None and step >= t.steps_per_epoch:
                break
            if n < d.world:
                continue
            lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
            sb = BPRBatch(b.users[lo:hi], b.pos[lo:hi], b.neg[lo:hi])
            if self.nsampler is not None:
                sb = self.nsampler.batch(sb, self.aux_rng)
                s = sb.subgraph
                s.lookup_batch = d.max_int(max(s.graph.n_users, s.graph.n_items))
            sb.global_size = n  # type: ignore[attr-defined]
            yield sb

    def loss(self, batch: BPRBatch) -> dict[str, torch.Tensor]:
        align = self.align
        # an Alignment may rewrite layer 0 (RLMRec-Gen's mask token)
        hook = getattr(align, "layer0_hook", None)
        if hook is not None and not getattr(align, "uses_layer0_hook", True):
            hook = None
        out = self.net.rec_forward(batch, layer0_hook=hook)
        loss = out.losses["loss"]
        terms = {k: v.detach() for k, v in out.losses.items() if k != "loss"}
        for k, v in align(out).items():
            loss = loss + v
            terms[k] = v.detach()
        return {**terms, "loss": loss}

    # ------------------------------------------------------------------ state
    def sharded_state(self) -> dict[str, Any]:
        sd = self.dmp.state_dict() if self.dmp is not None else self.net.state_dict()
        out: dict[str, Any] = {"model": sd}
        if self.fused_opt is not None:
            out["optim"] = fused_state(self.fused_opt)
        return out

    def load_sharded_state(self, state: dict[str, Any]) -> None:
        (self.dmp or self.net).load_state_dict(state["model"])
        if self.fused_opt is not None and "optim" in state:
            load_fused_state(self.fused_opt, state["optim"])

    def rank_state(self) -> dict[str, Any]:
        return {"aux_rng": self.aux_rng.bit_generator.state, "align": self.align.state_dict()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.aux_rng.bit_generator.state = state["aux_rng"]
        self.align.load_state_dict(state["align"])

    def weights_state(self) -> dict[str, Any]:
        out = {"model": (self.dmp or self.net).state_dict()}
        align = self.align.state_dict()
        if align:  # DCP stores no empty dict: an alignment without state has no entry
            out["align"] = align
        return out

    def load_weights_state(self, state: dict[str, Any]) -> None:
        (self.dmp or self.net).load_state_dict(state["model"])
        if "align" in state:
            self.align.load_state_dict(state["align"])
        self.net.invalidate_cache()

    # ------------------------------------------------------------------ representations
    @torch.no_grad()
    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        net, d = self.net, self.d
        net.eval()
        try:
            if not self.sampled:
                net.invalidate_cache()
                return net.eval_representations()
            # layer-wise exact inference over the full adjacency, a block of rows per rank
            nu, ni = self.data.n_users, self.data.n_items
            n = nu + ni
            lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
            if self._adj_block is None:
                import scipy.sparse as sp

                ns = self.nsampler
                a = sp.csr_matrix((ns.values, ns.indices, ns.indptr), shape=(n, n))
                self._adj_block = a[lo:hi]
            h = self._layer0_block(lo, hi)
            d.all_reduce(h)
            out = [h]
            for _ in range(self.params.get("layers", 0)):
                nxt = torch.zeros_like(h)
                nxt[lo:hi] = torch.from_numpy(np.asarray(self._adj_block @ h.numpy(),
                                                         dtype=np.float32))
                d.all_reduce(nxt)
                h = nxt
                out.append(h)
            final = net.combine_layers(out)  # the backbone's own combination (sum, concat)
            return final[:nu], final[nu:]
        finally:
            net.train()

    def _layer0_block(self, lo: int, hi: int) -> torch.Tensor:
        """[n_nodes, dim] zeros except rows lo..hi (looked up in chunks, collectively)."""
        d, nu = self.d, self.data.n_users
        n = nu + self.data.n_items
        out = torch.zeros(n, int(self.params.get("dim")))
        ch = self.cfg.train.propagation.infer_chunk
        steps = d.max_int(math.ceil((hi - lo) / ch))
        for k in range(steps):
            s, e = min(hi, lo + k * ch), min(hi, lo + (k + 1) * ch)
            ids = torch.arange(s, e)
            us, its = ids[ids < nu], ids[ids >= nu] - nu
            b = d.max_int(max(us.numel(), its.numel(), 1))
            u, i = self.net.tables.lookup(us, its, b)
            out[us] = u
            out[its + nu] = i
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        ev = self.cfg.eval
        matrices = self.data.eval_matrices(split, ev.mask_valid_at_test)
        if matrices is None:
            return None  # type: ignore[return-value]
        heldout, exclude = matrices
        u, i = self._reps = self.representations()
        users = eval_users(heldout, ev.max_users, self.cfg.train.seed, self.d)
        return ranking_metrics(lambda ids: u[ids] @ i.T, heldout, exclude, users, self.proto,
                               ev.chunk_size, self.d)

    # ------------------------------------------------------------------ export
    def export(self) -> dict[str, Any]:
        from recalign.train.export import owned_ranges, write_rows

        d, inp = self.d, self.inp
        reps = self.representations()
        nu, ni = self.data.n_users, self.data.n_items
        shards: list[tuple[str, int, int, int]] = []
        if self.dmp is not None:
            from recalign.tables.sharding import local_rows

            shards = [(tb, r0, c0, int(s.shape[0])) for tb, r0, c0, s in local_rows(self.dmp)]
        names = d.gather_objects(sorted({s[0] for s in shards}))
        sharded_tables: set[str] = set().union(*map(set, names))
        ranges = owned_ranges(shards, {"user": nu, "item": ni}, d.rank, d.world, sharded_tables)
        writer = inp.export.writer(d.rank)  # type: ignore[union-attr]
        # a model without ID tables (semantic-only) has no layer-0 rows: it exports its final
        # representations only, and a warm start from that snapshot says there are none
        layer0 = layer0_tables(self.dmp, self.net) if self.net.tables is not None else None
        for table, rs in ranges.items():
            vecs = reps[0] if table == "user" else reps[1]
            keys = inp.user_keys if table == "user" else inp.item_keys
            for lo, hi in rs:
                write_rows(writer, table, lo, vecs[lo:hi], keys)
                if layer0 is not None:
                    write_rows(writer, table, lo, layer0(table, lo, hi), keys, layer0=True)
        self._dim = int(reps[0].shape[1])
        return writer.parts_written()

    def export_extra(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"model": {"backbone": cfg.model.backbone, "preset": cfg.model.preset,
                          "params": self.params},
                "align": cfg.align.method, "propagation": cfg.train.propagation.mode,
                "dim": self._dim}

    def summary(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"propagation": cfg.train.propagation.mode,
                "align": getattr(self.align, "summary", {"method": cfg.align.method}),
                "warm_start": (None if self.warm is None
                               else {"from": self.warm.source, **self.warm.counts})}




def table_bounds(tables: Any) -> dict[str, tuple[int, int, float, float]]:
    """{table: (rows, dim, init low, init high)} from the tables' configs."""
    return {c.name: (int(c.num_embeddings), int(c.embedding_dim), float(c.weight_init_min),
                     float(c.weight_init_max)) for c in tables.configs}


@torch.no_grad()
def init_full(tables: Any, seed: int, warm: Any = None) -> None:
    """One process: every row from the seeded init (same values as any sharding), then the
    warm-start rows."""
    from recalign.tables.seeded_init import fill_rows, uniform_rows

    w = tables.named_weights()  # views of the live tables
    fill_rows([(t, 0, 0, x) for t, x in w.items()], uniform_rows(table_bounds(tables), seed))
    if warm is not None:
        from recalign.train.warm_start import apply_rows

        apply_rows({"user": w["user"], "item": w["item"]}, warm)


@torch.no_grad()
def init_shards(dmp: Any, bounds: dict[str, tuple[int, int, float, float]], seed: int,
                warm: Any = None) -> None:
    """N ranks: each rank fills only its own shards (rows and columns) with the rows a
    1-process run has there, and the warm-start rows that fall in them."""
    from recalign.tables.seeded_init import fill_rows, uniform_rows
    from recalign.tables.sharding import local_rows

    fill_rows(local_rows(dmp), uniform_rows(bounds, seed))
    if warm is None:
        return
    for table, r0, c0, shard in local_rows(dmp):
        rows, cols = shard.shape
        ids = warm.ids[table]
        sel = (ids >= r0) & (ids < r0 + rows)
        if sel.any():
            vec = torch.from_numpy(warm.vectors[table][sel][:, c0:c0 + cols])
            shard[torch.from_numpy(ids[sel] - r0)] = vec.to(shard.device, shard.dtype)


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
