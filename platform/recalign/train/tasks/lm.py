"""Task ``lm``: CLLM4Rec's token tables trained through a frozen causal LM (one phase per run).

* **pretrain** — epochs ``0 .. warmup_epochs-1`` are content-only (C-steps); every later epoch
  is one round: an L-step epoch over the collaborative documents (``Z^l`` trained, collaborative
  LM loss + mutual regulariser against frozen ``Z^c``), then a C-step epoch over the content
  documents (the reverse; no regulariser during warm-up, when ``Z^l`` is still random).
* **finetune** — RecLLM: per user and epoch, max(1, ⌊f·n⌋) training items leave the prompt;
  the multinomial head (tied to ``Z^l``'s items) is trained towards the removed items (paper)
  or all training items (``finetune_target: all``, the authors' code), + the regulariser.
* **Evaluation** (both phases): one forward per user over the prompt with every training item
  (pretrain: the collaborative document's prompt, finetune: the RecLLM prompt), the last state
  scores all items, training items masked; the ``cllm4rec`` protocol (R@20, R@40, N@100).
  Model selection on R@20 + R@40 + N@100 (``eval.select_metric: cllm4rec_sum``) as the authors.
* **Ranks**: data parallel over documents — every rank holds the frozen LM and the tables,
  takes its contiguous slice of each global batch (the same global order on every rank), and
  the trainer averages gradients; losses are scaled so that average is the global batch's.
  With ``tables: sharded`` the tables are instead one TorchRec collection row-wise sharded over
  the ranks (fused optimizer; TorchRec averages the row gradients over the world). Every
  sharded lookup is a collective, so every rank makes the same lookups with the same (agreed)
  batch sizes: no per-rank early return in the losses, and evaluation/export compute their
  users' states in a number of chunks agreed over the ranks, idle ranks looking up nothing.
* **Export**: pretrain — the collaborative token rows (CLLM4Rec-Emb); finetune — RecLLM user
  states (from every training item) and the item rows, whose inner products are the scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from recalign.config import Config
from recalign.data.documents import LMData
from recalign.errors import ConfigError
from recalign.eval.metrics import get_protocol, with_sums
from recalign.models.cllm4rec import CLLM4Rec, CLLM4RecParams, load_lm, lm_vocab
from recalign.tables.optim import TableOptimizerSpec, fused_state, load_fused_state
from recalign.train.evaluation import eval_users, ranking_metrics
from recalign.train.optimizers import Optimizers
from recalign.train.tasks.base import Task, rank_slices


def lm_params(cfg: Config) -> CLLM4RecParams:
    return CLLM4RecParams(**cfg.model.params)


def pad(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (causal: padding after a document changes none of
    its states)."""
    L = max((len(x) for x in docs), default=1)
    ids = torch.zeros(len(docs), max(L, 1), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(docs):
        ids[r, :len(x)] = torch.as_tensor(x, dtype=torch.int64)
        mask[r, :len(x)] = 1
    return ids, mask


@dataclass
class LMBatch:
    """One rank's documents of one global batch."""

    kind: str  # collab | content | rec
    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor  # flat positions (row * L + t) whose state predicts targets[k]
    targets: torch.Tensor
    reg_docs: int  # documents contributing regulariser terms (0: no regulariser)
    reg_users: torch.Tensor
    reg_items: torch.Tensor
    global_size: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device) -> "LMBatch":
        mv = {k: getattr(self, k).to(device) for k in ("ids", "mask", "pos", "targets",
                                                       "reg_users", "reg_items")}
        return LMBatch(self.kind, reg_docs=self.reg_docs, global_size=self.global_size,
                       extra={k: v.to(device) for k, v in self.extra.items()}, **mv)


class LMTask(Task):
    name = "lm"
    defaults = {"train": {"batch_size": 20, "eval_every": 1, "patience": 10, "min_epochs": 0,
                          "max_epochs": 110},
                "eval": {"protocol": "cllm4rec", "select_metric": "cllm4rec_sum"}}
    data_type = LMData
    units = "documents"

    # ------------------------------------------------------------------ driver side
    @classmethod
    def prepare(cls, cfg: Config, ds: Any) -> LMData:
        if isinstance(ds, LMData):
            return ds
        from transformers import AutoConfig, AutoTokenizer

        from recalign.llm.models import resolve_model

        p = lm_params(cfg)
        path = resolve_model(p.lm)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            conf = AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model.params.lm {p.lm!r} ({path}): no tokenizer/config of a "
                              f"Hugging Face model ({type(exc).__name__})") from None
        if not any(a.endswith("ForCausalLM") for a in (getattr(conf, "architectures", None)
                                                       or [])):
            raise ConfigError(f"model.params.lm {p.lm!r} ({path}): not a causal LM "
                              f"(architectures {getattr(conf, 'architectures', None)})")
        data = LMData.from_dataset(ds, tok, int(conf.vocab_size), content=p.content,
                                   max_text_tokens=p.max_text_tokens)
        data.report.update(lm=path, hidden=int(conf.hidden_size),
                           lm_context=int(getattr(conf, "max_position_embeddings", 0) or 0))
        return data

    @classmethod
    def meta(cls, cfg: Config, data: LMData) -> dict[str, Any]:
        p = lm_params(cfg)
        return {"task": cls.name, "backbone": cfg.model.backbone, "phase": p.phase,
                "lm": data.report.get("lm"), "dim": data.report.get("hidden"),
                "n_users": data.n_users, "n_items": data.n_items}

    @classmethod
    def check(cls, cfg: Config, data: LMData) -> None:
        p = lm_params(cfg)
        if cfg.eval.protocol != "cllm4rec":
            raise ConfigError(f"eval.protocol {cfg.eval.protocol!r}: CLLM4Rec is evaluated with "
                              "the cllm4rec protocol (eval.protocol: cllm4rec)")
        if cfg.align.method != "none":
            raise ConfigError("align.method applies to CF backbones, not to cllm4rec")
        ctx = data.report.get("lm_context") or 0
        if ctx and p.max_tokens > ctx:
            raise ConfigError(f"model.params.max_tokens {p.max_tokens} exceeds the LM's context "
                              f"of {ctx} positions (max_position_embeddings)")
        if not (data.train_counts() > 0).any():
            raise ConfigError("no user has a training item: nothing to train CLLM4Rec on")
        if p.content == "none" and p.lam > 0:
            raise ConfigError(f"model.params.lam {p.lam}: must be 0 with content: none (LLM-CF "
                              "has no content tables to regularise against)")
        if p.phase == "pretrain" and p.content != "none" and data.doc_user.size == 0:
            raise ConfigError("no training interaction has text (review or item title/"
                              "description): CLLM4Rec's content documents would be empty")
        if p.phase == "finetune" and p.init_from is None:
            raise ConfigError("model.params.init_from: fine-tuning starts from a pretraining "
                              "run's folder (recalign cllm4rec --phase all chains them)")
        if p.init_from is not None:
            check_init_from(p.init_from, cls.meta(cfg, data))
        if p.tables == "sharded" and p.lr is not None:
            raise ConfigError("model.params.lr is the dense Adam's; with tables: sharded the "
                              "rows train by the fused table_optimizer (set its lr)")

    # ------------------------------------------------------------------ worker side
    def build(self) -> Optimizers:
        cfg, d = self.cfg, self.d
        self.data: LMData = self.inp.data
        self.p = p = lm_params(cfg)
        lm, _, _ = load_lm(self.data.report.get("lm") or p.lm, p.dtype)
        if lm_vocab(lm) != self.data.vocab:
            raise ConfigError(f"model.params.lm: {lm_vocab(lm)} input embedding rows, the "
                              f"documents were made for {self.data.vocab}")
        self.model = CLLM4Rec(lm.to(d.device), self.data.n_users, self.data.n_items, p,
                              d.device)
        self.dmp: Any = None
        self.fused_opt: Any = None
        if p.tables == "sharded":
            self._use_tables()
        self.model.init_tables(cfg.train.seed)
        if p.init_from is not None:
            self._load_init(p.init_from)
        self.proto = get_protocol(cfg.eval.protocol)
        self.sampler = None
        if p.loss == "sampled":
            from recalign.models.item_softmax import NegativeSampler

            self.sampler = NegativeSampler(self.data.n_items, "uniform")
            self.neg_gen = torch.Generator().manual_seed(cfg.train.seed + 17)
        self.tokens = 0
        self.truncated = {"documents": 0, "prompts": 0}
        spec = TableOptimizerSpec(**cfg.train.optimizer.model_dump())
        spec = spec.model_copy(update={"kernel": "dense", "lr": p.resolved_lr()})
        if self.model.sharded:  # the rows update inside backward: no dense parameter left
            return Optimizers([], spec, self.fused_opt)
        return Optimizers(self.model.token_parameters(), spec)

    def _use_tables(self) -> None:
        """``tables: sharded``: both sides of the user and item rows in one TorchRec
        collection with a fused optimizer, row-wise sharded over the ranks or unsharded in one
        process (:func:`place_fused_tables`: 1 and N ranks agree), from the world-size
        independent seeded N(0, init_std²)."""
        from recalign.models.cllm4rec import seeded_normal_rows
        from recalign.tables import IdTables
        from recalign.tables.optim import fused_spec
        from recalign.train.fused_tables import place_fused_tables

        d, p, m, seed = self.d, self.p, self.model, self.cfg.train.seed
        nu, ni = m.table_rows()

        def normal_rows(table: str, lo: int, hi: int, cols: tuple[int, int]) -> torch.Tensor:
            return seeded_normal_rows(table, lo, hi, m.dim, p.init_std, seed, cols=cols)

        self.dmp, self.fused_opt = place_fused_tables(
            lambda device, spec: IdTables(nu, ni, m.dim, device=device, optimizer=spec),
            fused_spec(p.table_optimizer, d.device, "tables: sharded"), d,
            lambda tables: normal_rows, m.use_sharded_tables)

    def _load_init(self, run_dir: str) -> None:
        from recalign.train.checkpoint import BestWeights

        best = read_result(run_dir).get("best_epoch", -1)
        if best is None or best < 0:
            raise ConfigError(f"model.params.init_from {run_dir}: the run has no best weights "
                              "(no validation finished)")
        state = self.weights_state()
        BestWeights(run_dir, self.d.distributed, self.d.rank, self.d.barrier).load(state, best)
        if self.model.sharded:  # not only in place: the fused kernel's rows may be copies
            self.load_weights_state(state)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    # ------------------------------------------------------------------ batches
    def _epoch_plan(self) -> list[str]:
        p = self.p
        if p.phase == "finetune":
            return ["rec"]
        if p.content == "none":  # LLM-CF: the collaborative LM alone
            return ["collab"]
        return ["content"] if self.warming_up() else ["collab", "content"]

    def warming_up(self) -> bool:
        """Pretraining's content-only warm-up epochs (no mutual regulariser yet)."""
        return self.p.phase == "pretrain" and self.epoch < self.p.warmup_epochs

    def batches(self) -> Iterator[LMBatch]:
        plan = self._epoch_plan()
        epoch_seed = int(self.rng.integers(2**62))
        for kind in plan:
            yield from self._kind_batches(kind, epoch_seed)

    def _kind_batches(self, kind: str, epoch_seed: int) -> Iterator[LMBatch]:
        t, d, data = self.cfg.train, self.d, self.data
        if kind == "content":
            units = np.arange(data.doc_user.size)
        else:
            units = np.flatnonzero(data.train_counts() > 0)
        order = units[self.rng.permutation(units.size)]
        if kind == "content" and self.p.content_per_epoch is not None:
            order = order[:self.p.content_per_epoch]
        for idx, lo, hi in rank_slices(order, t.batch_size, d, t.steps_per_epoch):
            b = self._make(kind, idx[lo:hi], epoch_seed)
            b.global_size = idx.size
            yield b.to(d.device)

    def _make(self, kind: str, units: np.ndarray, epoch_seed: int) -> LMBatch:
        data, p = self.data, self.p
        docs, pos, tgt, ru, ri, extra_r, extra_c = [], [], [], [], [], [], []
        reg = p.lam > 0 and not (kind == "content" and self.warming_up())
        for r, unit in enumerate(units):
            rng = np.random.default_rng((epoch_seed, kind == "content", int(unit)))
            if kind == "content":
                ids, plen = data.content_doc(int(unit), p.max_tokens)
                full = plen + (data.text_ptr[unit + 1] - data.text_ptr[unit])
                users, items = [int(data.doc_user[unit])], [int(data.doc_item[unit])]
                targets = ids[plen:]
            else:
                u = int(unit)
                items_u = data.train_of(u)
                if p.shuffle_items:
                    items_u = items_u[rng.permutation(items_u.size)]
                if kind == "collab":
                    ids, plen = data.collab_doc(u, items_u, p.max_tokens)
                    full = plen + items_u.size
                    targets = [i - data.item0 for i in ids[plen:]]
                else:  # rec: max(1, floor(f n)) random items leave the prompt
                    k = max(1, int(np.floor(p.mask_fraction * items_u.size)))
                    drop = np.zeros(items_u.size, dtype=bool)
                    drop[rng.choice(items_u.size, k, replace=False)] = True
                    removed, kept = items_u[drop], items_u[~drop]  # kept keeps its order
                    ids, trunc = data.rec_prompt(u, kept, p.max_tokens, "finetune")
                    full = len(ids) + int(trunc)
                    plen = len(ids)
                    goal = removed if p.finetune_target == "heldout" else items_u
                    extra_r += [r] * goal.size
                    extra_c += goal.tolist()
                    targets = []
                # the regulariser covers the document's tokens (rec: the targets too)
                users = [u]
                items = (np.unique(items_u).tolist() if kind == "rec"
                         else sorted({t - data.item0 for t in ids[plen:]}))
            if full > len(ids):
                self.truncated["documents"] += 1
            docs.append(ids)
            L0 = len(ids)
            # position t's state predicts token t+1: main-text tokens from plen on
            pos += [(r, t) for t in range(plen - 1, L0 - 1)][:len(targets)]
            tgt += list(targets)
            if reg:
                ru += users
                ri += items
        ids_t, mask = pad(docs)
        L = ids_t.shape[1]
        flat = torch.as_tensor([r * L + t for r, t in pos], dtype=torch.int64)
        extra = {}
        if kind == "rec":
            extra = {"rows": torch.as_tensor(extra_r, dtype=torch.int64),
                     "cols": torch.as_tensor(extra_c, dtype=torch.int64)}
        return LMBatch(kind, ids_t, mask, flat, torch.as_tensor(tgt, dtype=torch.int64),
                       len(units) if reg else 0, torch.as_tensor(ru, dtype=torch.int64),
                       torch.as_tensor(ri, dtype=torch.int64), extra=extra)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: LMBatch) -> dict[str, torch.Tensor]:
        """Token-mean cross-entropy over the global batch's main-text tokens (collab/content),
        or the mean over its users of the multinomial NLL (rec), + lam × the mutual
        regulariser per document; each rank's share scaled so the ranks' gradient average is
        the global batch's."""
        m = self.model
        side = "content" if batch.kind == "content" else "collab"
        neg = None
        if self.sampler is not None and batch.kind == "collab":
            neg = self.sampler.sample(self.p.negatives, self.neg_gen).to(batch.ids.device)
        if not m.sharded:
            return self._loss(batch, side, neg)
        tables = m.collab if side == "collab" else m.content
        tables.prefetch(*self._trained_rows(batch, neg))
        try:
            return self._loss(batch, side, neg)
        finally:
            tables.end_step()

    def _trained_rows(self, batch: LMBatch, neg: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(user ids, item ids) of every row the step reads with gradient on its side: the
        documents' tokens, the item head (every item, or the targets and negatives), the
        regulariser's tokens."""
        m, ids = self.model, batch.ids
        V, U = m.vocab, m.n_users
        users = [ids[(ids >= V) & (ids < V + U)] - V]
        items = [ids[ids >= V + U] - V - U]
        if batch.kind == "rec" or (batch.kind == "collab" and neg is None):
            items.append(torch.arange(m.n_items, device=ids.device))
        elif batch.kind == "collab":
            items += [batch.targets, neg - 1]
        if batch.reg_docs:
            users.append(batch.reg_users)
            items.append(batch.reg_items)
        return torch.cat(users), torch.cat(items)

    def _loss(self, batch: LMBatch, side: str, neg: torch.Tensor | None
              ) -> dict[str, torch.Tensor]:
        m, d = self.model, self.d
        h = m.hidden(batch.ids, batch.mask, side)
        n_tok = int(batch.mask.sum())
        counts = torch.tensor([float(batch.targets.numel()), float(n_tok)], device=d.device)
        if d.distributed:
            d.all_reduce(counts)
        self.tokens += int(counts[1].item())
        if batch.kind == "rec":
            states = h[torch.arange(h.shape[0], device=h.device), batch.mask.sum(1) - 1]
            main = m.multinomial_nll(m.item_logits(states), batch.extra["rows"],
                                     batch.extra["cols"])
            denom = float(batch.global_size)
            key = "rec_nll"
        else:
            hp = h.reshape(-1, h.shape[-1])[batch.pos]
            if batch.kind == "content":
                main = m.token_ce(m.word_logits(hp), batch.targets)
            else:
                main = self._item_ce(hp, batch.targets, neg)
            denom = float(counts[0].item())
            key = f"{batch.kind}_ce"
        scale = d.world / denom if denom else 0.0
        out = {key: (main * scale / d.world).detach()}
        loss = main * scale
        # the same on every rank (the kind and epoch; every rank has >= 1 document): a
        # sharded lookup inside is a collective
        if batch.reg_docs:
            mu = m.mutual(batch.reg_users, batch.reg_items, side)
            r = self.p.lam * mu * d.world / batch.global_size
            out["mutual"] = (mu / batch.global_size).detach()
            loss = loss + r
        if d.distributed:  # the logged terms: this rank's share of the global value
            out = {k: v * d.world for k, v in out.items()}
        out["loss"] = loss
        return out

    def _item_ce(self, hp: torch.Tensor, targets: torch.Tensor,
                 neg: torch.Tensor | None) -> torch.Tensor:
        """Item-token cross-entropy; ``neg``: the sampled softmax's negatives (model ids)."""
        m = self.model
        if targets.numel() == 0:
            return hp.sum() * 0.0
        if neg is None:
            return m.token_ce(m.item_logits(hp), targets)
        from recalign.models.item_softmax import sampled_softmax_loss

        _, rows = m.collab.lookup(torch.zeros(0, dtype=torch.int64, device=hp.device),
                                  torch.cat([targets, neg - 1]))
        n = targets.numel()
        return n * sampled_softmax_loss(hp, targets + 1, rows[:n], neg, rows[n:],
                                        self.sampler.log_q)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def user_states(self, users: np.ndarray) -> torch.Tensor:
        """Each user's state from the prompt with every training item (pretrain: the
        collaborative prompt; finetune: the RecLLM prompt)."""
        data, p = self.data, self.p
        out = []
        for s in range(0, users.size, p.eval_batch):
            docs = []
            for u in users[s:s + p.eval_batch]:
                ids, trunc = data.rec_prompt(int(u), data.train_of(int(u)), p.max_tokens,
                                             p.phase)
                self.truncated["prompts"] += int(trunc)
                docs.append(ids)
            ids_t, mask = pad(docs)
            out.append(self.model.user_states(ids_t.to(self.d.device), mask.to(self.d.device)))
        if not out:
            return torch.zeros(0, self.model.dim, device=self.d.device)
        return torch.cat(out)

    @torch.no_grad()
    def _lockstep(self, ids: np.ndarray, chunk: int, fn: Any) -> torch.Tensor:
        """``fn`` over ``ids`` in chunks of ``chunk``, as many calls on every rank (the most
        any rank needs; a rank without ids left looks up nothing): each call makes one sharded
        lookup, a collective. Returns the rows of all ``ids`` [n, H]."""
        d, m = self.d, self.model
        n = -(-ids.size // chunk)
        if d.distributed:
            n = d.max_int(n)
        out = []
        none = torch.zeros(0, dtype=torch.int64, device=d.device)
        for k in range(n):
            part = ids[k * chunk:(k + 1) * chunk]
            if part.size:
                out.append(fn(part).float())
            else:
                m.collab.lookup(none, none)
        if not out:
            return torch.zeros(0, m.dim, device=d.device)
        return torch.cat(out)

    def _states_of(self, users: np.ndarray, what: str) -> tuple[torch.Tensor, np.ndarray]:
        """Sharded: ``users``' states (``rec``) or collaborative rows (``rows``) computed in
        lockstep, and a position of every user id into them (-1: not computed)."""
        m, d = self.model, self.d
        if what == "rows":
            none = torch.zeros(0, dtype=torch.int64, device=d.device)
            fn = lambda ids: m.collab.lookup(torch.as_tensor(ids, device=d.device),  # noqa
                                             none)[0]
            states = self._lockstep(users, 4096, fn)
        else:
            states = self._lockstep(users, self.p.eval_batch, self.user_states)
        where = np.full(self.data.n_users, -1, dtype=np.int64)
        where[users] = np.arange(users.size)
        return states, where

    def evaluate(self, split: str) -> dict[str, float]:
        ev, data = self.cfg.eval, self.data
        was = self.model.training
        self.model.eval()
        items = self.model.item_rows().detach().float()
        heldout = data.heldout(split)

        users = eval_users(heldout, ev.max_users, self.cfg.train.seed, self.d)
        if self.model.sharded:  # the states first, in lockstep; then scoring is local
            states, where = self._states_of(np.asarray(users, dtype=np.int64), "rec")
            state_of: Any = lambda ids: states[torch.as_tensor(where[ids])]  # noqa: E731
        else:
            state_of = self.user_states

        def score(ids: torch.Tensor) -> torch.Tensor:
            return (state_of(ids.numpy()) @ items.T).cpu()

        out = ranking_metrics(score, heldout, data.train_matrix(), users, self.proto,
                              ev.chunk_size or max(1, self.p.eval_batch * 8), self.d)
        out = with_sums(out)
        self.model.train(was)
        return out

    # ------------------------------------------------------------------ state
    def _tables_module(self) -> torch.nn.Module:
        return self.dmp if self.dmp is not None else self.model.tables

    def weights_state(self) -> dict[str, Any]:
        if self.model.sharded:  # sharded: each rank's shards (ShardedTensors)
            return {"tables": self._tables_module().state_dict()}
        return {"collab": self.model.collab.state_dict(),
                "content": self.model.content.state_dict()}

    def load_weights_state(self, state: dict[str, Any]) -> None:
        if self.model.sharded:
            self._tables_module().load_state_dict(state["tables"])
            return
        self.model.collab.load_state_dict(state["collab"])
        self.model.content.load_state_dict(state["content"])

    def sharded_state(self) -> dict[str, Any]:
        out = self.weights_state()
        if self.fused_opt is not None:  # the fused optimizer's (sharded) row state
            out["optim"] = fused_state(self.fused_opt)
        return out

    def load_sharded_state(self, state: dict[str, Any]) -> None:
        self.load_weights_state(state)
        if self.fused_opt is not None and "optim" in state:
            load_fused_state(self.fused_opt, state["optim"])

    def rank_state(self) -> dict[str, Any]:
        return {"tokens": self.tokens,
                "neg_gen": self.neg_gen.get_state() if self.sampler is not None else None}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.tokens = state["tokens"]
        if self.sampler is not None and state.get("neg_gen") is not None:
            self.neg_gen.set_state(state["neg_gen"])

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def export(self) -> dict[str, Any]:
        from recalign.train.export import export_user_states

        d, inp = self.d, self.inp
        was = self.model.training
        self.model.eval()
        if self.model.sharded:
            from recalign.train.export import owned_ranges

            items_w = self.model.item_rows().detach().float()
            # this rank's users (export_user_states' block) in lockstep, then written locally
            own = owned_ranges([], {"user": self.data.n_users, "item": self.data.n_items},
                               d.rank, d.world, set())["user"]
            mine = np.concatenate([np.arange(lo, hi) for lo, hi in own] or
                                  [np.zeros(0, dtype=np.int64)]).astype(np.int64)
            states, where = self._states_of(
                mine, "rows" if self.p.phase == "pretrain" else "rec")
            rows: Any = lambda ids: states[torch.as_tensor(where[ids])]  # noqa: E731
        else:
            users_w, items_w = (t.detach().float() for t in self.model.collab.all_rows())
            rows = ((lambda ids: users_w[ids]) if self.p.phase == "pretrain"
                    else self.user_states)
        parts = export_user_states(inp.export, d.rank, d.world,  # type: ignore[arg-type]
                                   self.data.n_users, rows, items_w, inp.item_keys,
                                   inp.user_keys, chunk=1024)
        self.model.train(was)
        return parts

    def export_extra(self) -> dict[str, Any]:
        what = ("token rows (CLLM4Rec-Emb)" if self.p.phase == "pretrain"
                else "RecLLM user states, item token rows")
        return {"model": {"backbone": "cllm4rec", "params": self.p.model_dump()},
                "dim": self.model.dim, "vectors": what}

    def summary(self) -> dict[str, Any]:
        frozen = sum(q.numel() for q in self.model.lm.parameters())
        trained = (2 * (self.data.n_users + self.data.n_items) * self.model.dim
                   if self.model.sharded  # the parameters are this rank's shards only
                   else sum(q.numel() for q in self.model.token_parameters()))
        return {"model": {"backbone": "cllm4rec", "params": self.p.model_dump()},
                "tables": self.p.tables,
                "meta": self.meta(self.cfg, self.data), "phase": self.p.phase,
                "lm": self.data.report.get("lm"),
                "lm_parameters_frozen": frozen, "table_parameters": trained,
                "table_mib": round(trained * 4 / 2**20, 2), "tokens_trained": self.tokens,
                "truncated": dict(self.truncated), "documents": dict(self.data.report)}


def read_result(run_dir: str) -> dict[str, Any]:
    from recalign.storage.uri import fsspec_filesystem

    fs, base = fsspec_filesystem(run_dir)
    path = f"{base}/result.json"
    if not fs.exists(path):
        raise ConfigError(f"model.params.init_from {run_dir}: no result.json (not a finished "
                          "training run)")
    with fs.open(path, "r") as f:
        return json.load(f)


def check_init_from(run_dir: str, meta: dict[str, Any]) -> None:
    """The pretraining run must have the same LM width, users and items."""
    old = read_result(run_dir).get("meta") or {}
    for k in ("backbone", "dim", "n_users", "n_items"):
        if old.get(k) != meta.get(k):
            raise ConfigError(f"model.params.init_from {run_dir}: its {k} is {old.get(k)!r}, this "
                              f"run's is {meta.get(k)!r} (hidden size or data differ)")


__all__ = ["LMBatch", "LMTask", "check_init_from", "lm_params", "pad", "read_result"]
