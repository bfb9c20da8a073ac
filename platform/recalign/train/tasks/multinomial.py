"""Task ``multinomial``: a user's training items -> a multinomial over all items (Multi-VAE).

* **Data**: :class:`~recalign.train.data.CFData` (train/valid/test user × item matrices), e.g.
  a per-user 80/10/10 split (``data.split.method: user``, ``ratios: [0.8, 0.1, 0.1]``, the
  CLLM4Rec protocol of REFERENCE.md).
* **Batches**: every epoch a fresh random order of the users with training items, cut into
  global batches of ``train.batch_size`` users (500 in the paper). The noise of a global batch
  — the input-dropout draw for each of its training items and ``eps`` for each user — is drawn
  from the trainer's seeded generator (``self.rng``) for the whole global batch on every rank,
  and each rank keeps its contiguous slice of users. So 1 and N ranks see the same noise, and a
  resumed run draws what the uninterrupted one drew.
* **Loss**: per user ``-sum_j x_j log softmax_j + beta * KL``; each rank returns
  ``world / global batch size`` times the sum over its users, so that the trainer's average of
  the ranks' gradients is exactly the gradient of the global batch's mean. ``beta`` follows the
  optimizer steps taken (``min(anneal_cap, step / total_anneal_steps)``); the step counter is
  per-rank state in the checkpoint.
* **Evaluation**: full ranking over all items (protocol ``eval.protocol``, default
  ``cllm4rec``): each user is scored from their training items with ``z = mu``, the training
  items masked (at test also the validation items with ``eval.mask_valid_at_test``), for
  validation and test alike; users split over ranks (:mod:`recalign.train.evaluation`).
  Selection on the protocol's metric (recall@20), or on ``cllm4rec_sum`` (R@20 + R@40 + N@100,
  the CLLM4Rec authors' choice) with ``eval.select_metric``.
* **Export**: the model's scores as inner products. A logit is ``h_u . w_j + b_j`` with ``h_u``
  the decoder's hidden activation (``hidden``-d) at ``z = mu_u`` and ``w_j``, ``b_j`` the output
  layer's row and bias of item j. User rows are ``[h_u, 1]`` and item rows ``[w_j, b_j]``
  (``hidden + 1`` dims), so a retrieval index over the snapshot ranks items exactly as the
  model does (the bias is an item-popularity term, not negligible). ``mu`` itself (``latent``-d)
  lives in another space than any item row and is not exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from recalign.config import Config
from recalign.errors import ConfigError
from recalign.eval.metrics import get_protocol, with_sums
from recalign.models.multivae import MultiVAE, MultiVAEParams, normalised_weights
from recalign.tables.optim import TableOptimizerSpec
from recalign.train.data import CFData
from recalign.train.evaluation import eval_users, ranking_metrics
from recalign.train.optimizers import Optimizers
from recalign.train.tasks.base import Task, rank_slices


def model_params(cfg: Config) -> MultiVAEParams:
    from recalign.models.registry import get_backbone

    cls = get_backbone(cfg.model.backbone)
    base = dict(cls.PRESETS.get(cfg.model.preset, {})) if cfg.model.preset else {}
    return cls.Params(**{**base, **cfg.model.params})


def user_bags(train: Any, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(items, offsets)``: the training items of ``users`` concatenated in CSR order, and
    where each user's items start (an ``EmbeddingBag`` input)."""
    starts = train.indptr[users]
    lengths = train.indptr[users + 1] - starts
    offsets = np.zeros(users.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    pos = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return (torch.from_numpy(train.indices[pos].astype(np.int64)), torch.from_numpy(offsets))


@dataclass
class UserBatch:
    """This rank's users of one global batch, their training items as bags, and their noise."""

    users: np.ndarray
    items: torch.Tensor     # flat training items of the users
    offsets: torch.Tensor   # [B] start of each user's items
    rows: torch.Tensor      # the batch row of each item
    weights: torch.Tensor   # each item's encoder input: 1/sqrt(n_u) times its dropout multiplier
    eps: torch.Tensor       # [B, latent] reparameterisation noise
    global_size: int        # users in the global batch

    def __len__(self) -> int:
        return int(self.users.size)

    def to(self, device: torch.device) -> "UserBatch":
        return UserBatch(self.users, self.items.to(device), self.offsets.to(device),
                         self.rows.to(device), self.weights.to(device), self.eps.to(device),
                         self.global_size)


class MultinomialTask(Task):
    name = "multinomial"
    # the paper's batch of 500 users, validation every epoch (it selects the best of 200
    # epochs on validation); patience stops runs that have long stopped improving
    defaults = {"train": {"batch_size": 500, "eval_every": 1, "patience": 20, "min_epochs": 0,
                          "max_epochs": 200},
                "eval": {"protocol": "cllm4rec"}}
    data_type = CFData
    units = "users"

    # ------------------------------------------------------------------ driver side
    @classmethod
    def meta(cls, cfg: Config, data: CFData) -> dict[str, Any]:
        p = model_params(cfg)
        return {"task": cls.name, "backbone": cfg.model.backbone, "hidden": p.hidden,
                "latent": p.latent, "n_users": int(data.n_users), "n_items": int(data.n_items)}

    @classmethod
    def check(cls, cfg: Config, data: CFData) -> None:
        b = cfg.model.backbone
        if cfg.align.method != "none":
            raise ConfigError(f"align.method {cfg.align.method}: alignments apply to CF "
                              f"backbones with ID tables, not to {b}")
        if cfg.train.propagation.mode != "full" or cfg.train.warm_start:
            raise ConfigError("train.propagation and train.warm_start apply to CF backbones, "
                              f"not to {b}")
        if data.train.nnz == 0:
            raise ConfigError("the dataset has no training interactions")
        if data.valid is None or data.valid.nnz == 0:
            raise ConfigError("the validation split is empty: model selection and early "
                              "stopping need validation interactions (data.split)")
        proto = get_protocol(cfg.eval.protocol)
        if proto.single_target:
            for name, m in (("validation", data.valid), ("test", data.test)):
                if m is not None and (np.diff(m.indptr) > 1).any():
                    raise ConfigError(f"eval.protocol {proto.name}: expects one {name} item "
                                      "per user, and some users have more; use eval.protocol "
                                      f"cllm4rec (the protocol of {b}) or a leave-one-out split")

    # ------------------------------------------------------------------ worker side
    def build(self) -> Optimizers:
        cfg, d = self.cfg, self.d
        self.data: CFData = self.inp.data
        self.p = p = model_params(cfg)
        self.model = MultiVAE.build(self.data.n_items, p).to(d.device)
        self.train_users = np.flatnonzero(np.diff(self.data.train.indptr) > 0)
        self.steps = 0  # optimizer steps taken: the KL annealing clock
        self.proto = get_protocol(cfg.eval.protocol)
        spec = TableOptimizerSpec(**cfg.train.optimizer.model_dump())
        return Optimizers(self.model.parameters(), spec.model_copy(update={"kernel": "dense"}))

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def batches(self) -> Iterator[UserBatch]:
        t, d, p = self.cfg.train, self.d, self.p
        train = self.data.train
        lengths = np.diff(train.indptr)
        order = self.train_users[self.rng.permutation(self.train_users.size)]
        for users, lo, hi in rank_slices(order, t.batch_size, d, t.steps_per_epoch):
            n = users.size
            # the global batch's noise, whatever this rank keeps of it (see the module doc)
            nnz = lengths[users]
            drop = self.rng.random(int(nnz.sum()), dtype=np.float32) if p.dropout > 0 else None
            eps = self.rng.standard_normal((n, p.latent), dtype=np.float32)
            mine = users[lo:hi]
            items, offsets = user_bags(train, mine)
            rows, weights = normalised_weights(offsets, items.numel())
            if drop is not None:
                first = int(nnz[:lo].sum())
                keep = drop[first:first + items.numel()] >= p.dropout
                weights = weights * torch.from_numpy(keep).float() / (1.0 - p.dropout)
            yield UserBatch(mine, items, offsets, rows, weights,
                            torch.from_numpy(eps[lo:hi]), n).to(d.device)

    def loss(self, batch: UserBatch) -> dict[str, torch.Tensor]:
        """Called once per optimizer step (the trainer's loop), which advances beta's clock."""
        beta = self.model.beta(self.steps)
        self.steps += 1
        nll, kl = self.model.user_losses(batch.items, batch.offsets, batch.rows, batch.weights,
                                         batch.eps)
        # this rank's share of the global batch's mean: the trainer divides the sum of the
        # ranks' gradients by the world size
        scale = self.d.world / batch.global_size
        nll_s, kl_s = nll.sum() * scale, kl.sum() * scale
        return {"nll": nll_s.detach(), "kl": kl_s.detach(),
                "beta": torch.tensor(beta, dtype=torch.float64), "loss": nll_s + beta * kl_s}

    # ------------------------------------------------------------------ evaluation
    def _bags(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items, offsets = user_bags(self.data.train, users)
        _, weights = normalised_weights(offsets, items.numel())
        dev = self.d.device
        return items.to(dev), offsets.to(dev), weights.to(dev)

    def score_users(self, users: np.ndarray) -> torch.Tensor:
        """Logits [len(users), n_items] from the users' training items, ``z = mu``."""
        return self.model.scores(*self._bags(users))

    def evaluate(self, split: str) -> dict[str, float]:
        ev = self.cfg.eval
        matrices = self.data.eval_matrices(split, ev.mask_valid_at_test)
        if matrices is None:
            return {}
        heldout, exclude = matrices
        was_training = self.model.training
        self.model.eval()
        try:
            users = eval_users(heldout, ev.max_users, self.cfg.train.seed, self.d)
            out = ranking_metrics(lambda ids: self.score_users(ids.numpy()), heldout, exclude,
                                  users, self.proto, ev.chunk_size, self.d)
            # the CLLM4Rec authors' selection sum (eval.select_metric: cllm4rec_sum), so the
            # baseline can be selected as the LLM model it is compared with
            return with_sums(out)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ state
    def sharded_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_sharded_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def rank_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])

    def weights_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_weights_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def user_rows(self, users: np.ndarray) -> torch.Tensor:
        """``[h_u, 1]`` per user: with :meth:`item_rows`, inner products are the logits."""
        mu, _ = self.model.encode(*self._bags(users))
        h = self.model.hidden_of(mu)
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)

    @torch.no_grad()
    def item_rows(self) -> torch.Tensor:
        """``[w_j, b_j]`` per item (the output layer's row and bias)."""
        m = self.model
        return torch.cat([m.item_rows(), m.item_bias().unsqueeze(1)], dim=1)

    def export(self) -> dict[str, Any]:
        from recalign.train.export import export_user_states

        d, inp = self.d, self.inp
        was_training = self.model.training
        self.model.eval()
        parts = export_user_states(inp.export, d.rank, d.world,  # type: ignore[arg-type]
                                   self.data.n_users, self.user_rows, self.item_rows(),
                                   inp.item_keys, inp.user_keys)
        self.model.train(was_training)
        return parts

    def export_extra(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"model": {"backbone": cfg.model.backbone, "preset": cfg.model.preset,
                          "params": self.p.model_dump()},
                "dim": self.p.hidden + 1,
                "scores": "user . item = the model's logit: users [decoder hidden at z=mu, 1], "
                          "items [output row, output bias]"}

    def summary(self) -> dict[str, Any]:
        data = self.data
        no_train = np.diff(data.train.indptr) == 0
        heldout = np.zeros(data.n_users, dtype=bool)
        for m in (data.valid, data.test):
            if m is not None:
                heldout |= np.diff(m.indptr) > 0
        return {"model": {"backbone": self.cfg.model.backbone, "params": self.p.model_dump()},
                # not "users_trained": the trainer counts users over all epochs under that key
                "training_users": int(self.train_users.size),
                # scored from an empty input: the decoder's output at mu(0), a learned
                # popularity ranking
                "users_without_training_items": int((no_train & heldout).sum()),
                "kl_anneal": {"steps": self.steps, "beta": self.model.beta(self.steps)}}
