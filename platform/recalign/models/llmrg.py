"""LLMRG fusion (Wang et al., AAAI 2024; REFERENCE.md "LLMRG"): a base sequential model's state
``E_base``, SR-GNN's encoding ``E_ori`` of the user's reasoning graph and ``E_div`` of the
divergent graph, concatenated and projected to the user state, scored against the item table
with cross-entropy over all items (the task's ``loss_fn``, as every sequential model).

**Graphs of a sample** (built on the host per sample, :meth:`LLMRG.sample_inputs`, from the
``graphs`` snapshot, :mod:`recalign.data.reasoning_graphs`):

* ``E_ori`` — the reasoning graph: the user's item nodes and reason nodes with the chain edges
  item -> reason -> item (``direct: true``: the item nodes and the grounded direct next-item
  guesses, edges item -> guess, instead);
* ``E_div`` — the divergent graph: the item nodes and the divergent interests, edges item ->
  interest; a grounded interest is its item's row, an unmatched one its text;
* item nodes read the item table (shared with the base model); text nodes (reasons, unmatched
  interests) a Linear projection of their text vectors;
* no look-ahead: a training sample whose history is training positions ``[0, end)`` sees the
  nodes and edges with ``step < end`` only; evaluation and export see all of them;
* the history's last item is the readout node; when the graph lacks it (the validation item at
  test time, an item the generator left out) it joins as a node, linked from the item before it
  when that one is a node;
* users without a graph (not sampled, failed, stale; counted by the loader) fall back to the
  plain session graph of their history in both encoders;
* graphs keep the ``max_nodes`` most recent nodes (by step; the readout node always).

Each encoder is SR-GNN's gated GNN with its attention readout on the last item node
(:class:`recalign.models.srgnn.GatedGraph`), over all nodes of the graph.

**Ablations** (REFERENCE.md): ``graph: none`` — the base model alone, exactly (no further
parameter, the same random draws); ``graph: sequence`` — SR-GNN on the plain session graph
(read out over positions, as the SR-GNN backbone); ``graph: reasoning`` with ``divergent:
false`` — without divergent extension; ``verify: false`` — without verification (unverified and
low-scoring chains kept); ``direct: true`` — the LLM's direct next-item guesses as the graph.

The base trains as it would alone (DuoRec keeps its contrastive term on its own states); only
its recommendation loss is taken on the fused state.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator
from torch import nn

from recalign.data import graph_schema as gs
from recalign.errors import ConfigError
from recalign.models.registry import get_backbone, register_backbone
from recalign.models.sequential import LossFn, SequentialModel, SequentialParams, ViewContext
from recalign.models.srgnn import GatedGraph, normalized_adjacency, session_graphs

#: settings the task reads from the fusion model's params; the base gets dim and max_len from
#: them and must not set any of them itself
_SHARED = set(SequentialParams.model_fields) - {"dropout", "init_std"}


class LLMRGParams(SequentialParams):
    samples: Literal["prefixes"] = "prefixes"
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the concatenated states "
                           "before the fusion projection")
    base: str = Field("duorec", description="the base sequential model (a model.backbone name "
                      "that trains on prefixes)")
    base_params: dict[str, Any] = Field(default_factory=dict, description="the base model's "
                                        "own params (dim, max_len, loss, ... are this model's)")
    graph: Literal["none", "sequence", "reasoning"] = Field(
        "reasoning", description="E_ori: none (the base alone), sequence (SR-GNN on the plain "
        "session graph) or reasoning (SR-GNN on the LLM reasoning graph)")
    divergent: bool | None = Field(None, description="add E_div from the divergent graph "
                                   "(default: with graph: reasoning and not direct)")
    verify: bool = Field(True, description="drop chains whose verification score is below tau "
                         "(NaN: never verified) at load time; false: keep every chain")
    tau: float = Field(30.0, ge=0, le=100, description="verification threshold (0-100)")
    direct: bool = Field(False, description="ablation: the grounded direct next-item guesses "
                         "as E_ori's graph instead of the reasoning chains")
    graphs: str | None = Field(None, description="graphs snapshot: a version v=... of the "
                               "dataset's graphs artifact, or a URI <root>/<dataset>/<artifact>"
                               "[/v=...]; default its LATEST")
    steps: int = Field(1, ge=1, description="gated-GNN propagation steps")
    max_nodes: int = Field(256, ge=2, description="nodes per graph (the most recent kept)")

    @model_validator(mode="after")
    def _consistent(self) -> "LLMRGParams":
        if self.graph != "reasoning":
            if self.divergent or self.direct:
                raise ValueError(f"divergent and direct read the LLM graphs: graph: "
                                 f"{self.graph} takes neither (graph: reasoning)")
            self.divergent = False
        elif self.divergent is None:
            self.divergent = not self.direct
        clash = sorted(_SHARED & set(self.base_params))
        if clash:
            raise ValueError(f"base_params.{clash[0]}: set model.params.{clash[0]} (shared "
                             "by the base and the fusion)")
        if self.base == "llmrg":
            raise ValueError("base: llmrg cannot be its own base")
        return self

    def base_model_params(self) -> Any:
        """The base model's params: ``base_params`` with this model's dim, max_len and
        prefix samples."""
        cls = get_backbone(self.base)
        if not issubclass(cls, SequentialModel):
            raise ConfigError(f"model.params.base {self.base!r} is not a sequential model")
        try:
            return cls.Params(**{**self.base_params, "dim": self.dim, "max_len": self.max_len,
                                 "samples": "prefixes"})
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                            for e in exc.errors())
            raise ConfigError(f"model.params.base_params ({self.base}): {msg} (the LLMRG base "
                              "trains on prefixes, one state per sample)") from None


@register_backbone("llmrg")
class LLMRG(SequentialModel):
    Params = LLMRGParams
    PRESETS = {
        "full": {"graph": "reasoning"},
        "base": {"graph": "none"},
        "sequence-graph": {"graph": "sequence"},
        "no-divergent": {"graph": "reasoning", "divergent": False},
        "no-verify": {"graph": "reasoning", "verify": False},
        "direct": {"graph": "reasoning", "direct": True},
    }

    def __init__(self, n_items: int, params: LLMRGParams, data: Any = None) -> None:
        p = params
        # the base first, alone: graph: none draws exactly what the base model would
        base = get_backbone(p.base).build(n_items, p.base_model_params(), data)
        super().__init__(n_items, p, data, items=base.items)
        self.base = base
        self.extra_tokens = base.extra_tokens  # type: ignore[misc]
        self.needs_same_target = base.needs_same_target  # type: ignore[misc]
        self.graphs = getattr(data, "graphs", None)
        if p.graph == "reasoning" and self.graphs is None:
            raise ConfigError("model.backbone llmrg (graph: reasoning) needs the graphs "
                              "snapshot; the task loads it (prepare)")
        if p.graph == "none":
            return
        d = p.dim
        self.ori = GatedGraph(d, p.steps)
        self.ori.init_uniform()
        self.div: GatedGraph | None = None
        if p.divergent:
            self.div = GatedGraph(d, p.steps)
            self.div.init_uniform()
        self.text_proj: nn.Linear | None = None
        if p.graph == "reasoning" and self.graphs.vectors.shape[0]:
            vec = np.concatenate([np.zeros((1, self.graphs.text_dim), np.float32),
                                  self.graphs.vectors])
            self.register_buffer("text_vectors", torch.from_numpy(vec), persistent=False)
            self.text_proj = nn.Linear(self.graphs.text_dim, d)
        parts = 2 + (self.div is not None)
        self.drop = nn.Dropout(p.dropout)
        self.fusion = nn.Linear(parts * d, d)
        # starts as the base: identity on E_base, zero on the graph states, so the base learns
        # at its own pace from step one and the graphs add what they carry (a small random
        # projection of all three scaled every gradient into the base by ~init_std and made
        # the fused model learn several times slower than its base)
        with torch.no_grad():
            self.fusion.weight.zero_()
            self.fusion.weight[:, :d] = torch.eye(d)
            self.fusion.bias.zero_()

    def use_tables(self, tables: nn.Module, lookup_size: Callable[[int], int]) -> None:
        """``item_table: sharded``: the fusion model holds the tables; the base reads its rows
        through it (one table, one lookup per embed call on every rank)."""
        super().use_tables(tables, lookup_size)
        self.base.read_rows_of(self)

    @classmethod
    def reads_attributes(cls, params: Any) -> bool:
        return get_backbone(params.base).reads_attributes(params.base_model_params())

    @classmethod
    def graph_request(cls, params: Any) -> dict[str, Any] | None:
        if params.graph != "reasoning":
            # the base and sequence variants read no graph, but report their metrics over
            # the users that got one too (when a graphs snapshot exists), for comparison
            return {"kinds": [gs.ITEM], "verify": params.verify, "tau": params.tau,
                    "version": params.graphs, "optional": True}
        ori, div = graph_kinds(params)
        return {"kinds": sorted(set(ori) | set(div or ())), "verify": params.verify,
                "tau": params.tau, "version": params.graphs}

    # ------------------------------------------------------------------ host side
    def draws_views(self) -> bool:
        return self.base.draws_views()

    def make_views(self, seqs: list[np.ndarray], rngs: list[np.random.Generator],
                   ctx: ViewContext) -> dict[str, torch.Tensor]:
        return self.base.make_views(seqs, rngs, ctx)

    def wants_sample_inputs(self) -> bool:
        return self.params.graph == "reasoning"

    def sample_inputs(self, users: np.ndarray, ends: np.ndarray | None,
                      histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        p = self.params
        ori, div = graph_kinds(p)
        out = graph_tensors(self.graphs, users, ends, histories, ori, p.max_nodes, "graph_ori_")
        if div is not None:
            out.update(graph_tensors(self.graphs, users, ends, histories, div, p.max_nodes,
                                     "graph_div_"))
        return out

    # ------------------------------------------------------------------ device side
    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        """Without per-user graph inputs every row uses its session graph (the fallback)."""
        return self.state(inputs, {})

    def state(self, inputs: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.base.user_repr(inputs), inputs, extra)

    def fuse(self, e_base: torch.Tensor, inputs: torch.Tensor,
             views: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.params.graph == "none":
            return e_base
        parts = [e_base]
        if self.params.graph == "sequence":
            parts.append(self.ori.sessions(inputs, self.embed))
        else:
            parts.append(self.encode(self.ori, views, "graph_ori_", inputs))
            if self.div is not None:
                parts.append(self.encode(self.div, views, "graph_div_", inputs))
        return self.fusion(self.drop(torch.cat(parts, -1)))

    def encode(self, enc: GatedGraph, views: dict[str, torch.Tensor], prefix: str,
               inputs: torch.Tensor) -> torch.Tensor:
        """SR-GNN over the rows' graphs (``views[prefix + ...]``), or over their session graphs
        when there are none; read out over all nodes on the readout node."""
        if prefix + "item" in views:
            item, text = views[prefix + "item"], views[prefix + "text"]
            a_in, a_out = normalized_adjacency(views[prefix + "adj"])
            last = views[prefix + "last"]
        else:
            item, alias, a_in, a_out = session_graphs(inputs)
            text = torch.zeros_like(item)
            last = alias[:, -1]
        h = self.embed(item)
        if self.text_proj is not None:
            h = h + self.text_proj(self.text_vectors[text]) * (text > 0).unsqueeze(-1)
        h = enc.gnn(h, a_in, a_out)
        h_last = h[torch.arange(h.shape[0], device=h.device), last]
        return enc.readout(h, (item > 0) | (text > 0), h_last)

    def loss_terms(self, batch: Any) -> int:
        return self.base.loss_terms(batch)

    def losses(self, batch: Any, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        if self.params.graph == "none":
            return self.base.losses(batch, loss_fn)

        def fused(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if h.shape[0] != len(batch):
                raise ConfigError(f"model.params.base {self.params.base}: its loss does not "
                                  "score one state per sample; the fusion needs one")
            return loss_fn(self.fuse(h, batch.inputs, batch.views), targets)

        return self.base.losses(batch, fused)


def graph_kinds(p: LLMRGParams) -> tuple[list[str], list[str] | None]:
    """The node kinds of E_ori's graph and of E_div's (None: no E_div)."""
    ori = [gs.ITEM, gs.DIRECT if p.direct else gs.REASON]
    return ori, ([gs.ITEM, gs.DIVERGENT] if p.divergent else None)


def graph_tensors(graphs: Any, users: np.ndarray, ends: np.ndarray | None,
                  histories: list[np.ndarray], kinds: list[str], max_nodes: int,
                  prefix: str) -> dict[str, torch.Tensor]:
    """One graph per row, padded to the batch's largest: ``item`` [B, N] model ids (0: not an
    item node), ``text`` [B, N] text rows + 1 (0: none), ``adj`` [B, N, N] 0/1 (edge u -> v),
    ``last`` [B] the readout node. Rows of users without a graph: their session graph (the
    distinct history items in ascending id order, an edge per consecutive pair)."""
    rows = []
    for r, u in enumerate(users):
        hist = np.asarray(histories[r], np.int64)
        end = None if ends is None else int(ends[r])
        if graphs is not None and graphs.has_graph[u]:
            rows.append(_reasoning_row(graphs, int(u), end, hist, kinds, max_nodes))
        else:
            rows.append(_session_row(hist))
    n = max(1, max(r[0].size for r in rows))
    b = len(rows)
    item = np.zeros((b, n), np.int64)
    text = np.zeros((b, n), np.int64)
    adj = np.zeros((b, n, n), np.float32)
    last = np.zeros(b, np.int64)
    for r, (it, tx, src, dst, lst) in enumerate(rows):
        item[r, :it.size] = it
        text[r, :tx.size] = tx
        adj[r, src, dst] = 1.0
        last[r] = lst
    return {prefix + "item": torch.from_numpy(item), prefix + "text": torch.from_numpy(text),
            prefix + "adj": torch.from_numpy(adj), prefix + "last": torch.from_numpy(last)}


def _session_row(hist: np.ndarray) -> tuple[np.ndarray, ...]:
    if hist.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, z, 0
    nodes, inv = np.unique(hist, return_inverse=True)
    return nodes, np.zeros_like(nodes), inv[:-1], inv[1:], int(inv[-1])


def _reasoning_row(graphs: Any, user: int, end: int | None, hist: np.ndarray,
                   kinds: list[str], max_nodes: int) -> tuple[np.ndarray, ...]:
    from recalign.data.reasoning_graphs import ITEM

    g_item, g_text, g_kind, steps, src, dst = graphs.subgraph(user, end, kinds)
    item = np.where(g_item >= 0, g_item + 1, 0)
    text = np.where(g_item >= 0, 0, g_text + 1)
    is_item = g_kind == ITEM
    last_item = int(hist[-1]) if hist.size else 0
    hit = np.flatnonzero(is_item & (item == last_item))
    last = int(hit[0]) if hit.size else 0
    if last_item and not hit.size:  # the last item joins, linked from the one before it
        prev = np.flatnonzero(is_item & (item == int(hist[-2]))) if hist.size > 1 else hit
        last = item.size
        item, text = np.append(item, last_item), np.append(text, 0)
        steps = np.append(steps, np.iinfo(np.int64).max)
        if prev.size:
            src, dst = np.append(src, prev[0]), np.append(dst, last)
    if item.size > max_nodes:  # the most recent nodes, the readout node always
        steps = steps.astype(np.int64)
        steps[last] = np.iinfo(np.int64).max
        kept = np.sort(np.argsort(-steps, kind="stable")[:max_nodes])
        new = np.full(item.size, -1, np.int64)
        new[kept] = np.arange(kept.size)
        ok = (new[src] >= 0) & (new[dst] >= 0)
        item, text, src, dst, last = (item[kept], text[kept], new[src[ok]], new[dst[ok]],
                                      int(new[last]))
    return item, text, src, dst, last
