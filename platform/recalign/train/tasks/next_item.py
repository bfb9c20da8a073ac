"""Task ``next-item``: a user's time-ordered history -> the next item (sequential recommenders).

* **Data** (:mod:`recalign.data.sequences`): a leave-one-out split by time; training windows of
  ``max_len + 1`` items from each user's training sequence, every position predicting its next
  item (causal models), in a fresh random order every epoch.
* **Loss**: the model's ``losses`` with the task's softmax — full cross-entropy over every item,
  or sampled softmax with logQ correction (``model.params.loss: sampled``).
* **Evaluation**: leave-one-out, full ranking over all items. Validation scores each user from
  the training history; at test time the validation item joins the history. With
  ``eval.mask_history`` (default) the history's items are masked, as in the S3-Rec all-rank
  tables REFERENCE.md cites. Users without a held-out item (fewer than 3 interactions) are
  excluded and counted.
* **Ranks**: data parallel — every rank holds the model, trains on its contiguous slice of each
  global batch (the same global order on every rank), and the trainer averages gradients; users
  are split over ranks for evaluation and export.
* **Export**: item rows of the table, and user states from each user's whole history.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from recalign.config import Config
from recalign.data.sequences import (SameTarget, SequenceBatch, SequenceData, histories_batch,
                                     window_batch)
from recalign.errors import ConfigError, SnapshotError
from recalign.eval.metrics import get_protocol
from recalign.models.item_softmax import (NegativeSampler, full_softmax_loss,
                                          sampled_softmax_loss)
from recalign.models.sequential import ViewContext
from recalign.tables.optim import TableOptimizerSpec, fused_state, load_fused_state
from recalign.train.evaluation import eval_users, ranking_metrics
from recalign.train.optimizers import Optimizers
from recalign.train.tasks.base import Task, rank_slices


def model_params(cfg: Config) -> Any:
    from recalign.models.registry import get_backbone

    cls = get_backbone(cfg.model.backbone)
    base = dict(cls.PRESETS.get(cfg.model.preset, {})) if cfg.model.preset else {}
    return cls.Params(**{**base, **cfg.model.params})


class NextItemTask(Task):
    name = "next-item"
    defaults = {"train": {"batch_size": 256, "eval_every": 1, "patience": 10, "min_epochs": 0,
                          "max_epochs": 300},
                "eval": {"protocol": "loo"}}
    data_type = SequenceData
    units = "sequences"

    # ------------------------------------------------------------------ driver side
    @classmethod
    def prepare(cls, cfg: Config, ds: Any) -> SequenceData:
        """Sequences, with per-item attribute ids when the model reads them (FDSA), and the
        LLMRG reasoning graphs (the ``graphs`` snapshot of the dataset) when it reads those."""
        from recalign.data.item_attributes import load_item_attributes
        from recalign.models.registry import get_backbone

        data = ds if isinstance(ds, SequenceData) else SequenceData.from_dataset(ds)
        model = get_backbone(cfg.model.backbone)
        if isinstance(ds, SequenceData):
            return data
        p = model_params(cfg)
        if model.reads_attributes(p) and data.attributes is None:
            data.attributes = load_item_attributes(cfg.data.item_attributes, ds)
        req = model.graph_request(p)
        if req is not None and data.graphs is None:
            from recalign.data.graph_schema import ARTIFACT
            from recalign.data.reasoning_graphs import load_graphs, open_graphs

            artifact = getattr(getattr(cfg, "llmrg", None), "artifact", ARTIFACT)
            optional = req.pop("optional", False)
            try:
                snap = open_graphs(cfg.output.root, ds.name, artifact, req.pop("version"))
            except SnapshotError:
                if not optional:
                    raise
                return data
            data.graphs = load_graphs(snap, ds.user_map.keys, data.n_items,
                                      data.train_lengths(), **req)
        return data

    @classmethod
    def meta(cls, cfg: Config, data: SequenceData) -> dict[str, Any]:
        p = model_params(cfg)
        out = {"task": cls.name, "backbone": cfg.model.backbone, "dim": p.dim,
               "max_len": p.max_len, "n_users": data.n_users, "n_items": data.n_items}
        if data.graphs is not None:  # a resumed run must read the same graphs
            out["graphs"] = data.graphs.report["version"]
        return out

    @classmethod
    def check(cls, cfg: Config, data: SequenceData) -> None:
        if cfg.eval.protocol != "loo":
            raise ConfigError(f"eval.protocol {cfg.eval.protocol!r}: model.backbone "
                              f"{cfg.model.backbone} is a sequential model, evaluated "
                              "leave-one-out (eval.protocol: loo, data.split.method: loo)")
        if cfg.align.method != "none":
            raise ConfigError(f"align.method {cfg.align.method}: alignments apply to CF "
                              f"backbones, not to the sequential model {cfg.model.backbone}")
        if cfg.train.propagation.mode != "full" or cfg.train.warm_start:
            raise ConfigError("train.propagation and train.warm_start apply to CF backbones, "
                              f"not to the sequential model {cfg.model.backbone}")
        if (data.valid < 0).all():
            raise ConfigError("no user has a validation item: the next-item task needs a "
                              "leave-one-out split by time (data.split.method: loo) and users "
                              "with at least 3 interactions")
        if not (data.train_lengths() >= 2).any():
            raise ConfigError("no user has 2 training items: nothing to learn a next item from")

    # ------------------------------------------------------------------ worker side
    def build(self) -> Optimizers:
        from recalign.models.registry import get_backbone

        cfg, d = self.cfg, self.d
        self.data: SequenceData = self.inp.data
        self.p = p = model_params(cfg)
        cls = get_backbone(cfg.model.backbone)
        self.model = cls.build(self.data.n_items, p, self.data).to(d.device)
        self.samples = (self.data.training_windows(p.max_len) if p.samples == "windows"
                        else self.data.training_prefixes())
        self.same_target = (SameTarget(self.data, *self.samples)
                            if self.model.needs_same_target else None)
        self.has_views = self.model.draws_views()
        self.has_inputs = self.model.wants_sample_inputs()
        self.dmp: Any = None
        fused_opt, table_ids = None, set()
        if p.item_table == "sharded":
            fused_opt, table_ids = self._use_tables()
        self.sampler = None
        if p.loss == "sampled":
            counts = np.bincount(self.data.items, minlength=self.data.n_items)
            self.sampler = NegativeSampler(self.data.n_items, p.negative_sampler, counts)
            # negatives drawn on the CPU from their own seeded stream (same on every rank)
            self.neg_gen = torch.Generator().manual_seed(cfg.train.seed + 17)
        from recalign.align.precision import resolve_bf16

        self.bf16 = resolve_bf16(p.bf16, d.device)
        self.proto = get_protocol(cfg.eval.protocol)
        self.truncated: dict[str, int] = {}
        self.graph_user_metrics: dict[str, float] | None = None
        spec = TableOptimizerSpec(**cfg.train.optimizer.model_dump())
        self.fused_opt = fused_opt
        dense = [q for q in self.model.parameters() if id(q) not in table_ids]
        return Optimizers(dense, spec.model_copy(update={"kernel": "dense"}), fused_opt)

    def _use_tables(self) -> tuple[Any, set[int]]:
        """``item_table: sharded``: the item rows (and the model's :meth:`bag_tables`) in
        TorchRec tables with a fused optimizer, row-wise sharded over the ranks or one
        unsharded collection in one process (:func:`place_fused_tables`: 1 and N ranks
        agree)."""
        from recalign.tables import IdTables
        from recalign.tables.optim import fused_spec
        from recalign.tables.seeded_init import uniform_rows
        from recalign.train.fused_tables import place_fused_tables
        from recalign.train.tasks.pairwise import table_bounds

        d, p, model = self.d, self.p, self.model
        bags = model.bag_tables()
        self.dmp, opt = place_fused_tables(
            lambda device, spec: IdTables(1, model.table_rows, p.dim, device=device, bags=bags,
                                          optimizer=spec),
            fused_spec(p.table_optimizer, d.device, "item_table: sharded"), d,
            lambda tables: uniform_rows(table_bounds(tables), self.cfg.train.seed),
            model.use_tables, root=model, path="tables.ebc")
        if self.dmp is not None:
            self.model = self.dmp.module
        return opt, {id(q) for q in self.model.tables.ebc.parameters()}

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def batches(self) -> Iterator[SequenceBatch]:
        t, d, p = self.cfg.train, self.d, self.p
        users, ends = self.samples
        bs = t.batch_size
        order = self.rng.permutation(users.size)
        if p.length_buckets:
            order = self._bucketed(order, np.minimum(ends, p.max_len + 1), bs, p.length_buckets)
        # per-sample generators for the model's views: a function of (epoch, sample) only, so
        # the views do not depend on how samples are spread over ranks, and resume exactly
        epoch_seed = int(self.rng.integers(2**62)) if self.has_views else 0
        for idx, lo, hi in rank_slices(order, bs, d, t.steps_per_epoch):
            mine = idx[lo:hi]
            b = window_batch(self.data, users[mine], ends[mine], p.max_len,
                             last_only=p.samples == "prefixes")
            b.global_size = idx.size
            if self.has_views:
                seqs = self.data.sample_items(users[mine], ends[mine], p.max_len)
                rngs = [np.random.default_rng((epoch_seed, int(g))) for g in mine]
                ctx = ViewContext(self.data, p.max_len, mine, self.same_target)
                b.views = self.model.make_views(seqs, rngs, ctx)
            if self.has_inputs:  # a sample [0, end) predicts position end - 1 from [0, end - 1)
                b.views.update(self.model.sample_inputs(
                    users[mine], ends[mine] - 1, [r[r > 0] for r in b.inputs.numpy()]))
            yield b.to(d.device)

    def _bucketed(self, order: np.ndarray, lengths: np.ndarray, bs: int, k: int) -> np.ndarray:
        """``order`` regrouped: each run of ``k`` batches sorted by length, cut into batches,
        the batches shuffled (the last, partial batch stays last)."""
        runs = [order[s:s + k * bs] for s in range(0, order.size, k * bs)]
        runs = [r[np.argsort(lengths[r], kind="stable")] for r in runs]
        flat = np.concatenate(runs)
        full = flat.size // bs
        batches = flat[:full * bs].reshape(full, bs)[self.rng.permutation(full)]
        return np.concatenate([batches.reshape(-1), flat[full * bs:]])

    def _loss_fn(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.numel() == 0:  # e.g. no masked item in this rank's rows: a zero that
            return hidden.sum() * 0.0  # still reaches every parameter's gradient
        if self.sampler is None:
            return full_softmax_loss(hidden, targets, self.model.item_weights(), self.bf16)
        neg = self.sampler.sample(self.p.negatives, self.neg_gen).to(hidden.device)
        rows = self.model.embed(torch.cat([targets, neg]))  # one lookup for both
        n = targets.numel()
        return sampled_softmax_loss(hidden, targets, rows[:n], neg, rows[n:],
                                    self.sampler.log_q)

    def loss(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """The model's terms, each a mean over this rank's share; on N ranks rescaled to the
        rank's share of the global batch's mean (``world * local / global`` terms for the
        recommendation loss, rows for the others), so that the trainer's gradient average is
        exactly the global batch's (contrastive terms keep in-rank negatives)."""
        terms = self.model.losses(batch, self._loss_fn)
        s_rec = s_row = 1.0
        d = self.d
        if d.distributed:
            n = self.model.loss_terms(batch)
            total = float(d.all_reduce(torch.tensor([float(n)], device=d.device)).item())
            s_rec = d.world * n / total if total else 0.0
            s_row = d.world * len(batch) / batch.global_size
        loss = sum(v * (s_rec if k == "rec" else s_row) for k, v in terms.items())
        out = {k: v.detach() * (s_rec if k == "rec" else s_row) for k, v in terms.items()}
        out["loss"] = loss  # type: ignore[assignment]
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _user_states(self, users: np.ndarray, upto: str) -> torch.Tensor:
        seqs, trunc = histories_batch(self.data, users, upto, self.p.max_len)
        self.truncated[upto] = self.truncated.get(upto, 0) + trunc
        if self.has_inputs:  # the same per-user inputs as training, from the whole sequence
            dev = self.d.device
            extra = self.model.sample_inputs(users, None, [r[r > 0] for r in seqs.numpy()])
            return self.model.state(seqs.to(dev), {k: v.to(dev) for k, v in extra.items()})
        return self.model.user_repr(seqs.to(self.d.device))

    def evaluate(self, split: str) -> dict[str, float]:
        ev, data = self.cfg.eval, self.data
        self.model.eval()
        self.model.freeze_rows(True)
        heldout = data.heldout(split)
        exclude = data.history_matrix(split) if ev.mask_history else None
        items = self.model.item_weights().detach()
        self.truncated[split] = 0

        def score(ids: torch.Tensor) -> torch.Tensor:
            return self._user_states(ids.numpy(), split) @ items.T

        users = eval_users(heldout, ev.max_users, self.cfg.train.seed, self.d)
        out = ranking_metrics(score, heldout, exclude, users, self.proto, ev.chunk_size, self.d)
        if split == "test" and data.graphs is not None:
            # LLMRG: the same metrics over the users that got an LLM graph (when only a sample
            # got one, the all-user figure dilutes the effect)
            mine = users[data.graphs.has_graph[users] & (data.test[users] >= 0)]
            n = int(self.d.all_reduce(torch.tensor([float(mine.size)],
                                                   device=self.d.device)).item())
            if n:
                self.graph_user_metrics = {
                    **ranking_metrics(score, heldout, exclude, mine, self.proto,
                                      ev.chunk_size, self.d), "users": n}
        self.model.freeze_rows(False)
        self.model.train()
        return out

    # ------------------------------------------------------------------ state
    def sharded_state(self) -> dict[str, Any]:
        out = {"model": (self.dmp or self.model).state_dict()}
        if self.fused_opt is not None:
            out["optim"] = fused_state(self.fused_opt)
        return out

    def load_sharded_state(self, state: dict[str, Any]) -> None:
        (self.dmp or self.model).load_state_dict(state["model"])
        if self.fused_opt is not None and "optim" in state:
            load_fused_state(self.fused_opt, state["optim"])

    def rank_state(self) -> dict[str, Any]:
        return {"neg_gen": self.neg_gen.get_state() if self.sampler is not None else None}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        if self.sampler is not None and state.get("neg_gen") is not None:
            self.neg_gen.set_state(state["neg_gen"])

    def weights_state(self) -> dict[str, Any]:
        return {"model": (self.dmp or self.model).state_dict()}

    def load_weights_state(self, state: dict[str, Any]) -> None:
        (self.dmp or self.model).load_state_dict(state["model"])

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def export(self) -> dict[str, Any]:
        from recalign.train.export import export_user_states

        d, inp = self.d, self.inp
        self.model.eval()
        self.model.freeze_rows(True)
        parts = export_user_states(
            inp.export, d.rank, d.world, self.data.n_users,  # type: ignore[arg-type]
            lambda ids: self._user_states(ids, "all"), self.model.item_weights().detach(),
            inp.item_keys, inp.user_keys)
        self.model.freeze_rows(False)
        return parts

    def export_extra(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"model": {"backbone": cfg.model.backbone, "preset": cfg.model.preset,
                          "params": self.p.model_dump()}, "dim": self.p.dim}

    def summary(self) -> dict[str, Any]:
        lens = self.data.train_lengths()
        return {"model": {"backbone": self.cfg.model.backbone, "params": self.p.model_dump()},
                "item_table": self.p.item_table,
                "precision": "bf16" if self.bf16 else "fp32",
                "training_samples": {"kind": self.p.samples,
                                     "count": int(self.samples[0].size)},
                "users_without_heldout": int((self.data.test < 0).sum()),
                **({"item_attributes": self.data.attributes.report}
                   if type(self.model).reads_attributes(self.p) else {}),
                **({"reasoning_graphs": self.data.graphs.report}
                   if self.data.graphs is not None else {}),
                **({"test_graph_users": self.graph_user_metrics}
                   if self.graph_user_metrics else {}),
                "histories_truncated": dict(self.truncated),
                "train_sequence_length": {"mean": round(float(lens.mean()), 2),
                                          "max": int(lens.max())}}
