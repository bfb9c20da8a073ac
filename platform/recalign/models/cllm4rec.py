"""CLLM4Rec (Zhu et al., WWW 2024): a frozen causal LM reading user/item tokens from trained tables.

Every weight of the LM is frozen (no gradient, no optimizer state); only four tables train,
each of the LM's hidden width: collaborative ``Z^l`` and content ``Z^c`` rows for users and
items (two :func:`recalign.tables.make_id_tables` pairs, plain torch or TorchRec), initialised
N(0, ``init_std``²). With ``tables: sharded`` the four tables are one TorchRec collection
(:class:`SideTables` views of it, see :meth:`CLLM4Rec.use_sharded_tables`) row-wise sharded
over the ranks and trained by a fused fbgemm optimizer (``table_optimizer``). The LM reads
``inputs_embeds`` built from its word embeddings and those rows (the id space:
:mod:`recalign.data.documents`) and returns its last hidden states.

Heads (REFERENCE.md): the collaborative LM scores the next token against the item rows of
``Z^l`` only (tied); the content LM is the LM's own word head (words only); RecLLM scores every
item from the last state of the recommendation prompt (multinomial, tied to ``Z^l``).

The mutual regulariser ``lam · Σ ‖z^l − z^c‖²`` runs over the distinct user/item tokens of each
document, the side not being trained detached. It is a sum per document averaged over the
batch's documents (the authors' code sums over the whole batch: with their batch of 20 that is
20x this ``lam``); a per-document sum keeps it independent of how documents are spread over
ranks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.errors import ConfigError
from recalign.tables.optim import fused_table_optimizer
from recalign.models.registry import register_backbone


class CLLM4RecParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lm: str | None = Field(None, description="Hugging Face causal LM: a local folder or hub id; "
                           "default SmolLM2-135M-Instruct (recalign models prepare)")
    phase: Literal["pretrain", "finetune"] = Field(
        "pretrain", description="pretrain: content warm-up then alternating L/C steps; "
        "finetune: RecLLM with masked prompts and the multinomial head")
    warmup_epochs: int = Field(10, ge=0, description="pretrain: content-only epochs first")
    rounds: int = Field(100, ge=0, description="recalign cllm4rec: pretraining L/C rounds after "
                        "the warm-up (train.max_epochs = warmup_epochs + rounds)")
    finetune_epochs: int = Field(150, ge=1, description="recalign cllm4rec: fine-tuning epochs "
                                 "(train.max_epochs of that phase)")
    lam: float = Field(1.0, ge=0, description="mutual regulariser weight (0: none)")
    max_tokens: int = Field(1024, ge=8, description="positions per document (truncation keeps "
                            "a prompt's suffix, cuts a main text's tail)")
    max_text_tokens: int = Field(256, ge=1, description="content text tokens per document")
    content: Literal["auto", "review", "item", "none"] = Field(
        "auto", description="content text: the interaction's review (or a MovieLens user's tags) "
        "where present else the item's text (auto), reviews only, item text only, or none "
        "(LLM-CF: no content LM, lam must be 0)")
    content_per_epoch: int | None = Field(
        None, ge=1, description="content documents per C-step epoch, a fresh random sample each "
        "epoch (None: all, the paper); bounds an epoch's cost on small hardware")
    finetune_target: Literal["heldout", "all"] = Field(
        "heldout", description="RecLLM target: the items removed from the prompt (paper) or all "
        "training items (authors' code)")
    mask_fraction: float = Field(0.2, gt=0, lt=1, description="fine-tuning: max(1, "
                                 "floor(f·n)) of a user's n training items leave the prompt")
    shuffle_items: bool = Field(True, description="reorder item lists every epoch (paper "
                                "§3.3.4); false: the source's order")
    init_std: float = Field(0.02, gt=0)
    init_from: str | None = Field(None, description="finetune: the pretraining run folder whose "
                                  "best tables start fine-tuning")
    lr: float | None = Field(None, gt=0, description="Adam lr of the tables (default by phase: "
                             "1e-3 pretrain, 1e-4 finetune, the authors' code); replaces "
                             "train.optimizer.lr")
    loss: Literal["full", "sampled"] = Field(
        "full", description="collaborative LM: softmax over all items, or sampled softmax "
        "(logQ-corrected, shared negatives) for very large catalogues")
    negatives: int = Field(1024, ge=1, description="sampled: negatives per batch")
    eval_batch: int = Field(32, ge=1, description="users per LM forward when scoring")
    tables: Literal["torch", "torchrec", "sharded"] = Field(
        "torch", description="table backend: nn.Embedding, TorchRec embedding-bag tables, or "
        "(sharded) one TorchRec collection row-wise sharded over the ranks with a fused "
        "optimizer (table_optimizer, not lr) for millions of users and items")
    table_optimizer: dict[str, Any] = fused_table_optimizer("tables: sharded")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="the frozen LM's dtype")

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.phase == "pretrain" else 1e-4)


def load_lm(name: str | None, dtype: str = "float32") -> tuple[Any, Any, str]:
    """(frozen causal LM in eval mode, tokenizer, resolved path); a clear error when the path
    is not a causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recalign.llm.models import resolve_model

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.params.lm {name!r} ({path}): not a Hugging Face causal LM "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    lm.requires_grad_(False)
    lm.eval()
    return lm, tok, path


def random_lm(folder: str | Path, tokenizer_from: str | Path, *, hidden: int = 32,
              layers: int = 2, context: int = 512, seed: int = 0) -> str:
    """A randomly initialised Llama (SmolLM2's family and vocabulary) with ``tokenizer_from``'s
    tokenizer, saved in ``folder`` (reused when present): fast tests, and throughput at a
    chosen size (e.g. GPT-2's 768 x 12) where no checkpoint can be downloaded. It knows no
    language: never a result's backbone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        heads = max(1, hidden // 64) if hidden >= 64 else 2
        conf = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=1, max_position_embeddings=context,
                           tie_word_embeddings=True)
        LlamaForCausalLM(conf).save_pretrained(folder)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(tokenizer_from) / f, folder / f)
    return str(folder)


def lm_vocab(lm: Any) -> int:
    return int(lm.get_input_embeddings().num_embeddings)


class SideTables:
    """One side (``collab`` 0 / ``content`` 1) of the shared sharded collection, with the
    ``lookup``/``all_rows`` interface of an id-table pair. Both sides of an id interleave
    (row ``2 id + side``) so every rank's row block holds both sides of its ids.

    Every lookup is a collective when sharded: its KJT batch size is agreed over the ranks
    with ``size`` (``Dist.max_int``; identity in one process) before each call. Not an
    ``nn.Module``: the rows are the collection's parameters, counted once.

    The fused optimizer updates the rows in the backward of each lookup, so a training step
    that looked rows up several times (input tokens, the item head, the regulariser) would
    update them several times — not one step on the summed gradient as the torch tables take.
    :meth:`prefetch` looks up every row a step trains at once; later lookups of the step read
    that result, so each row is updated once per step (one collective, too)."""

    def __init__(self, owner: "CLLM4Rec", side: int) -> None:
        self.owner, self.side = owner, side
        self._step: tuple[torch.Tensor, ...] | None = None

    def prefetch(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> None:
        """Look up the step's rows (duplicates allowed) once; :meth:`lookup` reads them until
        :meth:`end_step`."""
        users, items = torch.unique(user_ids.long()), torch.unique(item_ids.long())
        self._step = None
        self._step = (users, items, *self.lookup(users, items))

    def end_step(self) -> None:
        self._step = None

    @staticmethod
    def _at(have: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.searchsorted(have, ids.long()).clamp(max=max(have.numel() - 1, 0))
        if ids.numel() and (have.numel() == 0 or not torch.equal(have[pos], ids.long())):
            raise RuntimeError("a lookup asked for a row the step did not prefetch")
        return pos

    def lookup(self, user_ids: torch.Tensor, item_ids: torch.Tensor,
               batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._step is not None:
            users, items, urows, irows = self._step
            return urows[self._at(users, user_ids)], irows[self._at(items, item_ids)]
        o = self.owner
        n = o.lookup_size(max(user_ids.numel(), item_ids.numel(), 1, batch_size or 0))
        return o.tables.lookup(2 * user_ids.long() + self.side,
                               2 * item_ids.long() + self.side, batch_size=n)

    def all_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All user rows and all item rows of this side (the same batch on every rank)."""
        o = self.owner
        dev = o.lookup_device
        return self.lookup(torch.arange(o.n_users, device=dev),
                           torch.arange(o.n_items, device=dev))

    def item_rows(self) -> torch.Tensor:
        o = self.owner
        none = torch.zeros(0, dtype=torch.int64, device=o.lookup_device)
        return self.lookup(none, torch.arange(o.n_items, device=o.lookup_device))[1]

    def parameters(self) -> list[nn.Parameter]:
        return []  # the shared collection's rows train through the fused optimizer


@register_backbone("cllm4rec")
class CLLM4Rec(nn.Module):
    task: ClassVar[str] = "lm"
    Params: ClassVar[type] = CLLM4RecParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, lm: Any, n_users: int, n_items: int, p: CLLM4RecParams,
                 device: torch.device | str = "cpu") -> None:
        from recalign.tables import make_id_tables

        super().__init__()
        self.lm = lm  # frozen: its parameters are never handed to an optimizer
        self.p = p
        self.vocab = lm_vocab(lm)
        self.dim = int(lm.get_input_embeddings().embedding_dim)
        self.n_users, self.n_items = int(n_users), int(n_items)
        dev = torch.device(device)
        self.sharded = p.tables == "sharded"
        self.tables: Any = None
        self.lookup_device = dev
        if self.sharded:  # the task builds the collection: use_sharded_tables
            self.collab: Any = SideTables(self, 0)
            self.content: Any = SideTables(self, 1)
            return
        self.collab = make_id_tables(n_users, n_items, self.dim, device=dev, backend=p.tables)
        self.content = make_id_tables(n_users, n_items, self.dim, device=dev, backend=p.tables)

    def table_rows(self) -> tuple[int, int]:
        """(user rows, item rows) of the shared collection: both sides of every id."""
        return 2 * self.n_users, 2 * self.n_items

    def use_sharded_tables(self, tables: nn.Module, lookup_size: Any) -> None:
        """``tables: sharded``: read both sides from ``tables`` (an ``IdTables`` of
        :meth:`table_rows`, sharded or not); ``lookup_size(n)`` agrees on one KJT batch size
        over the ranks."""
        self.tables = tables
        self.lookup_size = lookup_size

    def init_tables(self, seed: int) -> None:
        """N(0, init_std²) from a generator of its own: the same rows for any world size
        (sharded: the task fills each rank's rows, :func:`seeded_normal_rows`)."""
        if self.sharded:
            return
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for t in self.token_parameters():
                t.copy_(torch.randn(t.shape, generator=g) * self.p.init_std)

    def token_parameters(self) -> list[nn.Parameter]:
        if self.sharded:
            return list(self.tables.parameters()) if self.tables is not None else []
        return [q for t in (self.collab, self.content) for q in t.parameters()]

    def train(self, mode: bool = True) -> "CLLM4Rec":
        super().train(mode)
        self.lm.train(mode)  # dropout as the LM was pretrained with; its weights stay frozen
        return self

    # ------------------------------------------------------------------ forward
    def embed(self, ids: torch.Tensor, side: str) -> torch.Tensor:
        """``inputs_embeds`` [B, L, H] of unified ids from the word table and ``side``'s
        (``collab``/``content``) user and item rows."""
        tables = self.collab if side == "collab" else self.content
        V, U = self.vocab, self.n_users
        word = ids < V
        out = self.lm.get_input_embeddings()(torch.where(word, ids, 0))
        is_user = (ids >= V) & (ids < V + U)
        is_item = ids >= V + U
        urows, irows = tables.lookup(ids[is_user] - V, ids[is_item] - V - U)
        out = out.index_put((is_user,), urows.to(out.dtype))
        return out.index_put((is_item,), irows.to(out.dtype))

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, side: str) -> torch.Tensor:
        """The LM's last hidden states [B, L, H] (float32) over right-padded documents."""
        emb = self.embed(ids, side)
        out = self.lm.base_model(inputs_embeds=emb, attention_mask=mask)
        return out.last_hidden_state.float()

    def item_rows(self) -> torch.Tensor:
        if self.sharded:  # a lookup of every item (a collective), not the user rows too
            return self.collab.item_rows()
        return self.collab.all_rows()[1]

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_rows().float().T

    def word_logits(self, h: torch.Tensor) -> torch.Tensor:
        head = self.lm.get_output_embeddings()
        return head(h.to(head.weight.dtype)).float()

    def mutual(self, users: torch.Tensor, items: torch.Tensor, train: str) -> torch.Tensor:
        """Σ ‖z^train − sg(z^other)‖² over the given user and item tokens."""
        a, b = ((self.collab, self.content) if train == "collab"
                else (self.content, self.collab))
        ua, ia = a.lookup(users, items)
        with torch.no_grad():
            ub, ib = b.lookup(users, items)
        return ((ua - ub) ** 2).sum() + ((ia - ib) ** 2).sum()

    def user_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last real position's state per row (right padding): what scores every item."""
        h = self.hidden(ids, mask, "collab")
        last = mask.sum(1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]

    @staticmethod
    def multinomial_nll(logits: torch.Tensor, rows: torch.Tensor,
                        cols: torch.Tensor) -> torch.Tensor:
        """Σ_rows −Σ_{j ∈ targets} log softmax_j, the targets given as (row, item) pairs."""
        lse = torch.logsumexp(logits, dim=1)
        return -(logits[rows, cols] - lse[rows]).sum()

    @staticmethod
    def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed token cross-entropy (the task divides by the global token count)."""
        return F.cross_entropy(logits, targets, reduction="sum")


def seeded_normal_rows(table: str, lo: int, hi: int, dim: int, std: float, seed: int,
                       cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows ``lo..hi`` of ``table`` drawn N(0, std²) from the world-size independent seeded
    uniform rows (:func:`recalign.tables.seeded_init.seeded_rows`) by the inverse normal CDF:
    the same values however the rows are split over ranks."""
    from recalign.tables.seeded_init import seeded_rows

    u = seeded_rows(table, lo, hi, dim, 0.0, 1.0, seed, cols=cols)
    u = u.clamp(1e-7, 1 - 1e-7)  # uniform_ may draw 0: erfinv(-1) is -inf
    return torch.special.erfinv(2 * u - 1) * (2 ** 0.5 * std)


__all__ = ["CLLM4Rec", "CLLM4RecParams", "SideTables", "load_lm", "lm_vocab", "random_lm",
           "seeded_normal_rows"]
