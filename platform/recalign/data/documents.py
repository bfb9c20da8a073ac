"""CLLM4Rec's documents: token-id sequences in one id space of words, user and item tokens.

Ids ``0 .. V-1`` are the LM's words, ``V + u`` is the token ``user_u`` and ``V + U + i`` the
token ``item_i`` (``U`` users). The tokenizer never sees ``user_u``/``item_i`` as text: prompt
pieces are tokenized once and the entity tokens are inserted as ids, so every such token stays
whole however large the catalogue (adding millions of tokens to a tokenizer is slow and
pointless when the ids are known).

Documents (prompts of the authors' code, REFERENCE.md "CLLM4Rec"):

* collaborative — ``user_u has interacted with`` + the user's training items, in a fresh random
  order every epoch (paper §3.3.4); the items are the main text;
* content — ``user_u wrote the following review for item_i:`` + the text of a *training*
  interaction: its review (or a MovieLens user's own tags) where it has one, else the item's
  text ``title. description (key: values; ...)`` — the documented fallback for sources without
  per-interaction text. The text is bounded to ``max_text_tokens`` tokens and is only ever
  modelled (a target), never an instruction;
* recommendation (fine-tuning and prediction) — ``user_u has interacted with <items>, user_u
  will interact with``; the state at its last token scores every item.

Truncation to the LM's ``max_tokens`` positions keeps a prompt's *suffix* (the part next to what
is predicted: a long item list loses its first items) and cuts a main text's tail; both counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from recalign.data.schema import TEST, TRAIN, VALID
from recalign.errors import ConfigError

#: the prompt pieces between entity tokens (the authors' wording)
PIECES = {"interacted": " has interacted with", "wrote": " wrote the following review for",
          "colon": ":", "comma": ",", "will": " will interact with"}
_ENTITY_TOKEN = re.compile(r"^(user|item)_\d+$")


def item_texts(ds: Any) -> list[str]:
    """Per item: ``title. description (key: v1, v2; ...)`` ("" where the source has nothing)."""
    out = [""] * ds.n_items
    if ds.items is None:
        return out
    cols = {c: ds.items[c].to_pylist() for c in ("item", "title", "description", "attributes")}
    for i, title, desc, attrs in zip(cols["item"], cols["title"], cols["description"],
                                     cols["attributes"]):
        parts = [p.strip() for p in (title, desc) if p and p.strip()]
        text = ". ".join(parts)
        if attrs:
            try:
                a = json.loads(attrs)
            except ValueError:
                a = {}
            kv = [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in (a.items() if isinstance(a, dict) else []) if v not in (None, [], "")]
            if kv:
                text = f"{text} ({'; '.join(kv)})" if text else "; ".join(kv)
        out[int(i)] = text
    return out


@dataclass
class LMData:
    """Everything the ``lm`` task needs, as numpy arrays (picklable for Ray Train workers)."""

    n_users: int
    n_items: int
    vocab: int  # word ids 0..vocab-1 (the LM's input embedding rows)
    train_ptr: np.ndarray  # CSR over users of their training items, in the source's order
    train_items: np.ndarray
    valid: sp.csr_matrix
    test: sp.csr_matrix
    pieces: dict[str, np.ndarray]  # word ids of each prompt piece
    doc_user: np.ndarray  # content documents: one per training interaction with text
    doc_item: np.ndarray
    text_ptr: np.ndarray
    text_ids: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def user0(self) -> int:
        return self.vocab

    @property
    def item0(self) -> int:
        return self.vocab + self.n_users

    def train_of(self, u: int) -> np.ndarray:
        return self.train_items[self.train_ptr[u]:self.train_ptr[u + 1]]

    def train_counts(self) -> np.ndarray:
        return np.diff(self.train_ptr)

    def train_matrix(self) -> sp.csr_matrix:
        data = np.ones(self.train_items.size, np.float32)
        m = sp.csr_matrix((data, self.train_items, self.train_ptr),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def heldout(self, split: str) -> sp.csr_matrix:
        return self.valid if split == "valid" else self.test

    # ------------------------------------------------------------------ documents
    def collab_doc(self, u: int, items: np.ndarray, max_tokens: int) -> tuple[list[int], int]:
        """(ids, prompt length): ``user_u has interacted with`` + ``items``; the item list is
        cut at its end to fit (it is reshuffled every epoch, so every item is seen)."""
        prompt = [self.user0 + u, *self.pieces["interacted"].tolist()]
        room = max(0, max_tokens - len(prompt))
        return prompt + (self.item0 + items[:room]).tolist(), len(prompt)

    def content_doc(self, d: int, max_tokens: int) -> tuple[list[int], int]:
        u, i = int(self.doc_user[d]), int(self.doc_item[d])
        prompt = [self.user0 + u, *self.pieces["wrote"].tolist(), self.item0 + i,
                  *self.pieces["colon"].tolist()]
        text = self.text_ids[self.text_ptr[d]:self.text_ptr[d + 1]]
        room = max(0, max_tokens - len(prompt))
        return prompt + text[:room].tolist(), len(prompt)

    def rec_prompt(self, u: int, items: np.ndarray, max_tokens: int,
                   style: str = "finetune") -> tuple[list[int], bool]:
        """(ids, truncated): the prompt whose last state scores every item. ``finetune``:
        ``user_u has interacted with <items>, user_u will interact with``; ``pretrain``: the
        collaborative document's prompt + items (the next item token is predicted). Too long:
        the prompt's suffix is kept (its first items dropped)."""
        ids = [self.user0 + u, *self.pieces["interacted"].tolist(), *(self.item0 + items).tolist()]
        if style == "finetune":
            ids += [*self.pieces["comma"].tolist(), self.user0 + u, *self.pieces["will"].tolist()]
        if len(ids) > max_tokens:
            return ids[len(ids) - max_tokens:], True
        return ids, False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, ds: Any, tokenizer: Any, vocab: int, *, content: str = "auto",
                     max_text_tokens: int = 256) -> "LMData":
        """Documents of ``ds``'s split. ``content``: ``review`` (interactions' text only),
        ``item`` (item text only), ``auto`` (review where present, else item text) or ``none``
        (no content documents: LLM-CF)."""
        check_tokenizer(tokenizer, vocab)
        report: dict[str, Any] = {}
        inter = ds.interactions
        split = inter["split"].to_numpy()
        users, items = inter["user"].to_numpy(), inter["item"].to_numpy()
        tr = np.flatnonzero(split == TRAIN)
        # a stable sort by user keeps each user's interactions in the source's order
        order = tr[np.argsort(users[tr], kind="stable")]
        counts = np.bincount(users[order], minlength=ds.n_users)
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        report["users_without_training_items"] = int((counts == 0).sum())

        def heldout(code: int) -> sp.csr_matrix:
            idx = np.flatnonzero(split == code)
            m = sp.csr_matrix((np.ones(idx.size, np.float32), (users[idx], items[idx])),
                              shape=(ds.n_users, ds.n_items))
            m.sum_duplicates()
            m.data[:] = 1.0
            return m

        pieces = {k: np.asarray(tokenizer(v, add_special_tokens=False)["input_ids"], np.int64)
                  for k, v in PIECES.items()}
        reviews = inter["review"]
        review = (pc.fill_null(pc.utf8_trim_whitespace(reviews), "").to_numpy(zero_copy_only=False)
                  if reviews.null_count < len(reviews) else np.full(len(reviews), "", object))
        itext = item_texts(ds) if content in ("auto", "item") else None
        texts, du, di, n_rev, n_item, n_none = [], [], [], 0, 0, 0
        for r in (order if content != "none" else ()):
            text = review[r] if content in ("auto", "review") else ""
            if text:
                n_rev += 1
            elif itext is not None and itext[items[r]]:
                text = itext[items[r]]
                n_item += 1
            else:
                n_none += 1
                continue
            texts.append(" " + text)
            du.append(users[r])
            di.append(items[r])
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        lens = np.array([min(len(e), max_text_tokens) for e in enc], np.int64)
        report.update(content_documents=len(texts), content_from_reviews=n_rev,
                      content_from_item_text=n_item, training_interactions_without_text=n_none,
                      content_texts_truncated=int(sum(len(e) > max_text_tokens for e in enc)))
        flat = (np.concatenate([np.asarray(e[:max_text_tokens], np.int64) for e in enc])
                if enc else np.zeros(0, np.int64))
        return cls(n_users=ds.n_users, n_items=ds.n_items, vocab=int(vocab), train_ptr=ptr,
                   train_items=items[order].astype(np.int64), valid=heldout(VALID),
                   test=heldout(TEST), pieces=pieces, doc_user=np.asarray(du, np.int64),
                   doc_item=np.asarray(di, np.int64),
                   text_ptr=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                   text_ids=flat, report=report)


def check_tokenizer(tokenizer: Any, vocab: int) -> None:
    """The word ids must lie below ``vocab`` and no word may already be an entity token: a
    vocabulary with ``user_12``/``item_7`` entries was extended before (another CLLM4Rec
    checkpoint), and its ids would collide with ours."""
    taken = [t for t in tokenizer.get_vocab() if _ENTITY_TOKEN.match(t.lstrip("Ġ▁ "))]
    if taken:
        raise ConfigError(f"model.params.lm: the tokenizer's vocabulary already holds entity "
                          f"tokens ({', '.join(sorted(taken)[:3])}, ... {len(taken)} in all); "
                          "use the base model, not an already extended one")
    if len(tokenizer) > vocab:
        raise ConfigError(f"model.params.lm: the tokenizer has {len(tokenizer)} tokens but the "
                          f"model's input embeddings only {vocab} rows")


__all__ = ["LMData", "PIECES", "check_tokenizer", "item_texts"]
