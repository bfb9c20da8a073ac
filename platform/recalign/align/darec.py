"""DaRec: disentangled alignment of CF and LLM representations (no public code; REFERENCE.md).

Per step, ``n_sample`` (N-hat) nodes with a semantic vector are drawn from all users and items
(each worker draws its own rows). Their CF representations ``E^C`` (the backbone's final
representations) and semantic vectors ``E^L`` each go through two MLP heads into a common
``width``: shared (``sh``) and specific (``sp``). With ``cos`` row-wise cosine, ``^`` L2
normalisation and ``lam`` the single weight::

    L_or  = mean cos(L_sp, L_sh)^2 + mean cos(C_sp, C_sh)^2              orthogonality
    L_uni = U(C_sp) + U(L_sp),  U(x) = log mean_{i<j} exp(-2 |x^_i - x^_j|^2)   uniformity
    L_glo = sum_{ij} (C^_sh C^_sh^T - L^_sh L^_sh^T)_{ij}^2                   global structure
            (default: E^C and E^L, each centred, in place of C_sh and L_sh; see below)
    L_loc = 1/K sum_i (S_ii - 1)^2 + 1/(K^2-K) sum_{i!=j} S_ij^2               local structure
    L     = lam * (L_or + L_uni + L_glo + L_loc)     (term_weights: lam * w_t per term, opt-in)

``L_glo`` is the paper's ``|S^C - S^L|_F^2`` (a sum over the N-hat^2 pairs) on normalised shared
parts, computed without the N-hat x N-hat matrices (:func:`global_structure`). Two extensions,
chosen by the validation search and on by default (docs/results.md; the paper's form is
``glo_centre: false, glo_on: shared``): ``glo_centre`` centres each side before
the cosines, and ``glo_on: representations`` compares the un-projected CF representations with
the semantic vectors. In the paper's form the learnable heads can match the two structures
themselves (or collapse) and the CF side learns nothing from the text; on the synthetic check it
is a no-op at every lambda that does not hurt. With the single ``lam`` of the paper the sum is
what sets the weight of the global term against the three normalised ones;
``glo_reduction: mean`` (divide by N-hat^2, i.e. a global term 10^6 times weaker at N-hat =
1024) was this module's first version and is kept only as an option: with it the global term
is negligible and, on the synthetic check, the uniformity and local terms alone cost accuracy
(docs/results.md, Alignment). For ``L_loc`` each side keeps K preference centres of its normalised shared parts in a
:class:`~recalign.align.kmeans.MiniBatchKMeans` (sums and counts all-reduced when a process
group / reduce function is given, so all workers hold the same centres); the CF centres are
matched to the LLM centres greedily by ascending Euclidean distance and ``S_ij`` is the cosine of
CF centre i and the LLM centre matched to CF centre j. The centres in ``S`` carry the gradient of
this step's rows (:meth:`MiniBatchKMeans.differentiable_centres`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from recalign.align.base import Alignment, register_alignment
from recalign.align.kmeans import MiniBatchKMeans, ReduceFn, greedy_match
from recalign.align.precision import Bf16, autocast, resolve_bf16
from recalign.align.rlmrec_con import backbone_reg_weight, own_l2, projection_mlp
from recalign.align.semantic import SemanticVectors


class DaRecParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(5e-6, ge=0, description="lambda: weight of the summed DaRec terms "
                          "(with L_glo a sum over N-hat^2 pairs; chosen by the validation "
                          "search in docs/results.md)")
    n_sample: int = Field(1024, ge=4, description="N-hat: rows sampled per step (per worker)")
    k: int = Field(4, ge=2, description="preference centres per side")
    width: int = Field(16, ge=2, description="width of the shared/specific parts")
    hidden: int | None = Field(32, ge=1, description="hidden width of the heads (None: "
                               "(in + width) // 2, the cost of 1536-d vectors; docs/results.md)")
    decay: float = Field(0.9, gt=0, le=1, description="k-means count decay per update")
    seed: int = Field(0, description="row sampling seed (the worker's rank is added)")
    reg_weight: float | None = Field(None, ge=0, description="L2 over the heads; default: "
                                     "the backbone's reg_weight")
    glo_reduction: Literal["sum", "mean"] = Field(
        "sum", description="L_glo over the N-hat^2 pairs: sum (the paper's squared Frobenius "
        "norm) or mean (divided by N-hat^2)")
    glo_centre: bool = Field(
        True, description="subtract each side's mean over the sampled rows before the cosine "
        "similarities of L_glo (an extension, not in the paper: text-encoder vectors share a "
        "large common direction, so their uncentred cosine matrix is mostly a constant offset)")
    glo_on: Literal["shared", "representations"] = Field(
        "representations", description="L_glo between the shared parts (the paper) or between the "
        "un-projected CF representations and semantic vectors (an extension: no head can fit "
        "the structure in place of the CF representations)")
    glo_constant: bool = Field(
        False, description="with glo_on: representations, add to L_glo's value the term "
        "|S^L|_F^2 that depends on the sampled semantic rows alone (no gradient): the exact "
        "value at N-hat^2 d_s more work per step; without it the value is shifted by that "
        "term and the training is the same")
    term_weights: dict[Literal["or", "uni", "glo", "loc"], float] = Field(
        default_factory=dict, description="extra multiplier per term on top of lambda (default "
        "1 each: the paper's single lambda); an extension for the search, not in the paper")
    bf16: Bf16 = Field("auto", description="keep the semantic vectors in bfloat16 (half the "
                       "memory) and run the semantic side's products in bf16 (fp32 "
                       "accumulation); the CF side stays fp32. auto (default): bf16 where the "
                       "hardware multiplies it natively, else fp32 (align/precision.py; "
                       "accuracy equal to fp32 on three sets, docs/results.md)")

    @field_validator("term_weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if w < 0}
        if bad:
            raise ValueError(f"term weights must be >= 0, got {bad}")
        return v


def uniformity(x: torch.Tensor, block_rows: int = 256) -> torch.Tensor:
    """log mean over pairs of exp(-2 |x_i - x_j|^2) of the L2-normalised rows."""
    return _Uniformity.apply(F.normalize(x, dim=-1), block_rows)


class _Uniformity(torch.autograd.Function):
    """Uniformity of unit rows by blocks of pairs, with a hand-written backward.

    Written by hand because ``pdist -> pow -> mul -> exp -> mean`` and autograd's backward of
    each allocate about ten N-hat^2/2 temporaries per call, and even one N-hat x N-hat matrix
    (4 MB at N-hat = 1024, 64 MB at 4096) is written to and read back from memory twice. For
    unit rows |x_i - x_j|^2 = 2 - 2 x_i.x_j, so with E_ij = exp(4 x_i.x_j - 4) off the diagonal
    (0 on it) and s = sum E: U = log(s / (n (n - 1))) and dU/dx = (8 / s) E x (E symmetric).
    The forward walks the blocks of E on and above the diagonal (each a cache-sized
    ``block_rows``^2 buffer, reused), adds each block's sum and its share of G = E x (block
    (i, j) adds E_ij x_j to rows i and E_ij^T x_i to rows j), and keeps only G (N-hat x width)
    for the backward: half the exponentials of the full matrix and no N-hat^2 memory."""

    @staticmethod
    def forward(ctx: Any, xn: torch.Tensor, block_rows: int) -> torch.Tensor:
        n, b = xn.shape[0], max(int(block_rows), 1)
        want_grad = ctx.needs_input_grad[0]
        buf = xn.new_empty(min(b, n) ** 2)
        neg4 = xn.new_full((), -4.0)
        sums: list[torch.Tensor] = []  # one per block; added in double below
        g = torch.zeros_like(xn) if want_grad else None
        for i0 in range(0, n, b):
            xi = xn[i0:i0 + b]
            for j0 in range(i0, n, b):
                xj = xn[j0:j0 + b]
                e = buf[: xi.shape[0] * xj.shape[0]].view(xi.shape[0], xj.shape[0])
                torch.addmm(neg4, xi, xj.T, alpha=4, out=e).exp_()  # exp(4 x_i.x_j - 4)
                if i0 == j0:
                    e.diagonal().zero_()
                sums.append(e.sum() if i0 == j0 else 2 * e.sum())
                if g is not None:
                    g[i0:i0 + b].addmm_(e, xj)
                    if i0 != j0:
                        g[j0:j0 + b].addmm_(e.T, xi)
        s = torch.stack(sums).double().sum().to(xn.dtype)
        ctx.save_for_backward(g, s)
        return (s / (n * (n - 1))).log()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        g, s = ctx.saved_tensors
        return (8 * grad / s) * g, None


def orthogonality(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1).square().mean()


def global_structure(c_sh: torch.Tensor, l_sh: torch.Tensor, reduction: str = "sum",
                     centre: bool = False, constant: bool = True,
                     l_sq: torch.Tensor | None = None) -> torch.Tensor:
    """|S^C - S^L|_F^2 of the cosine-similarity matrices (``mean``: divided by N-hat^2).

    The two sides may differ in width (N-hat x N-hat matrices either way). ``centre`` subtracts
    each side's mean row first, so S compares the rows' directions around their centre.

    Computed without the N-hat x N-hat matrices, as |C^TC|_F^2 - 2 |C^TL|_F^2 + |L^TL|_F^2
    (the trace identity), each Gram by its smaller form: N-hat (a^2 + ab) + min(N-hat^2 b,
    N-hat b^2) work for widths a <= b instead of N-hat^2 (a + b). ``constant=False`` leaves out
    |L^TL|_F^2 when ``l_sh`` carries no gradient (the semantic vectors under ``glo_on:
    representations``): the gradient is the same and the value is L_glo minus a term that
    depends on the sampled semantic rows alone; with 1536-d vectors that term's N-hat^2 d_s
    Gram was most of DaRec's step (docs/results.md, Alignment cost). ``l_sq``: the rows'
    squared norms when known (fixed vectors: computed once, not per step)."""
    c = F.normalize(c_sh - c_sh.mean(0) if centre else c_sh, dim=-1)
    if constant or l_sh.requires_grad:
        l_sh = l_sh.float()
        l_ = F.normalize(l_sh - l_sh.mean(0) if centre else l_sh, dim=-1)
        total = _gram_sq(c) - 2 * (c.T @ l_).square().sum() + _gram_sq(l_)
    else:
        total = _gram_sq(c) - 2 * _cross_fixed(c, l_sh, centre, l_sq).square().sum()
    return total if reduction == "sum" else total / (c.shape[0] ** 2)


def _cross_fixed(c: torch.Tensor, x: torch.Tensor, centre: bool,
                 sq: torch.Tensor | None = None) -> torch.Tensor:
    """``c^T normalize(x - mean x)`` without the centred, normalised copy of ``x``.

    ``x`` (no gradient) is N-hat x d_s: the copy and its centring and division, ~3 passes of
    fresh memory per step, cost as much as the product itself on CPU. Row norms of the centred
    rows come from |x_i|^2 - 2 x_i.mu + |mu|^2, and the centring moves to the 32 x d_s side."""
    # x may be bf16 (DaRecParams.bf16): products and reductions in its dtype (fp32
    # accumulation inside), results in fp32; a dtype= argument would make an fp32 copy of x
    f32 = torch.float32
    if sq is None:
        sq = torch.linalg.vector_norm(x, dim=1).to(f32).square()  # no N-hat x d_s temporary
    if centre:
        mu = (x.new_ones(1, x.shape[0]) @ x).to(f32).squeeze(0) / x.shape[0]  # bf16 mean(0) copies
        sq = sq - 2 * (x @ mu.to(x.dtype)).to(f32) + mu @ mu
    w = c * sq.clamp_min(1e-24).rsqrt().unsqueeze(1)  # F.normalize's eps 1e-12 on the norm
    m = (w.to(x.dtype).T @ x).to(f32)
    return m - torch.outer(w.sum(0), mu) if centre else m


def _gram_sq(x: torch.Tensor) -> torch.Tensor:
    """|x x^T|_F^2 = |x^T x|_F^2, by the smaller of the two Gram matrices."""
    g = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    return g.square().sum()


def two_heads(x: torch.Tensor, a: nn.Sequential, b: nn.Sequential) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """``a(x), b(x)`` for two Linear -> activation -> Linear heads, with one product for both
    first layers: ``x`` (N-hat x 1536 semantic rows) is read once, forward and backward,
    instead of twice (its products are most of DaRec's step on CPU)."""
    h = F.linear(x, torch.cat([a[0].weight, b[0].weight]), torch.cat([a[0].bias, b[0].bias]))
    ha, hb = h.split([a[0].out_features, b[0].out_features], dim=-1)
    return a[2](a[1](ha)), b[2](b[1](hb))


def _gather_rows(users: torch.Tensor, items: torch.Tensor,
                 idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of ``cat([users, items])`` without building the concatenation (a fresh
    copy of every representation per step), as ``(idx reordered users first, rows)``."""
    is_user = idx < users.shape[0]
    u, i = idx[is_user], idx[~is_user]
    rows = torch.cat([users.index_select(0, u), items.index_select(0, i - users.shape[0])])
    return torch.cat([u, i]), rows


def local_structure(c_centres: torch.Tensor, l_centres: torch.Tensor,
                    perm: torch.Tensor) -> torch.Tensor:
    """1/K sum (S_ii-1)^2 + 1/(K^2-K) sum_{i!=j} S_ij^2 with S_ij = cos(c_i, l_perm[j])."""
    k = c_centres.shape[0]
    s = F.normalize(c_centres, dim=-1) @ F.normalize(l_centres[perm], dim=-1).T
    diag = torch.diagonal(s)
    off = s.square().sum() - diag.square().sum()
    return (diag - 1).square().mean() + off / (k * k - k)


@register_alignment("darec")
class DaRec(Alignment):
    Params: ClassVar[type[BaseModel]] = DaRecParams

    def __init__(self, semantic: SemanticVectors, dim: int, params: DaRecParams | None = None,
                 *, reg_weight: float = 0.0, group: object = None,
                 reduce_fn: ReduceFn | None = None, rank: int = 0,
                 device: torch.device | None = None) -> None:
        super().__init__()
        p = self.params = params or DaRecParams()
        self.reg_weight = p.reg_weight if p.reg_weight is not None else reg_weight
        if group is not None:
            import torch.distributed as dist
            rank = dist.get_rank(group)  # type: ignore[arg-type]
        self.c_sh = projection_mlp(dim, p.width, p.hidden)
        self.c_sp = projection_mlp(dim, p.width, p.hidden)
        self.l_sh = projection_mlp(semantic.dim, p.width, p.hidden)
        self.l_sp = projection_mlp(semantic.dim, p.width, p.hidden)
        kw = dict(decay=p.decay, group=group, reduce_fn=reduce_fn, is_root=rank == 0, seed=p.seed)
        self.km_c = MiniBatchKMeans(p.k, p.width, **kw)  # type: ignore[arg-type]
        self.km_l = MiniBatchKMeans(p.k, p.width, **kw)  # type: ignore[arg-type]
        sem, mask = semantic.all_nodes()
        self.bf16 = resolve_bf16(p.bf16, device)  # "auto": on the training device
        if self.bf16:
            sem = sem.bfloat16()
        self.register_buffer("sem", sem, persistent=False)
        self.register_buffer("has_sem", mask, persistent=False)
        # squared norms of the (fixed) vectors for L_glo's centring: once, not per step
        self.register_buffer("sem_sq", torch.linalg.vector_norm(sem.float(), dim=1).square(),
                             persistent=False)
        self.register_buffer("nodes_with", torch.nonzero(mask).flatten(), persistent=False)
        self.n_users = semantic.n_users
        self._rows = sem.new_empty(0)
        self._gen = torch.Generator().manual_seed(int(p.seed) + 1_000_003 * int(rank))
        self.last_parts: dict[str, float] = {}

    @classmethod
    def build(cls, semantic: SemanticVectors, dim: int, params: dict | DaRecParams | None = None,
              *, backbone: Any = None, group: object = None, reduce_fn: ReduceFn | None = None,
              rank: int = 0, device: torch.device | None = None, **_: Any) -> "DaRec":
        p = params if isinstance(params, DaRecParams) else DaRecParams(**(params or {}))
        return cls(semantic, dim, p, reg_weight=backbone_reg_weight(backbone), group=group,
                   reduce_fn=reduce_fn, rank=rank, device=device)

    def sample(self) -> torch.Tensor:
        n = self.nodes_with.numel()
        m = min(self.params.n_sample, n)
        return self.nodes_with[torch.randperm(n, generator=self._gen)[:m]]

    def _semantic_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The semantic vectors of ``idx``, gathered into one buffer kept across steps.

        A fresh N-hat x d_s tensor per step (6 MB at 1536-d) costs more in page faults than the
        gather itself on CPU (glibc returns large blocks to the OS on free). Reuse is safe:
        autograd's version counter raises if a step's backward still needed the previous rows."""
        if self._rows.device != self.sem.device or self._rows.dtype != self.sem.dtype:
            self._rows = self.sem.new_empty(0)
        return torch.index_select(self.sem, 0, idx, out=self._rows)

    def terms(self, e_c: torch.Tensor, e_l: torch.Tensor,
              l_sq: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The four unweighted DaRec terms for CF rows ``e_c`` and semantic rows ``e_l``
        (``l_sq``: their squared norms, if known)."""
        c_sh, c_sp = two_heads(e_c, self.c_sh, self.c_sp)
        with autocast(self.bf16, e_l.device):
            l_sh, l_sp = (t.float() for t in two_heads(e_l, self.l_sh, self.l_sp))
        nc, nl = F.normalize(c_sh, dim=-1), F.normalize(l_sh, dim=-1)
        ic, _ = self.km_c.update(nc)
        il, _ = self.km_l.update(nl)
        cc = self.km_c.differentiable_centres(nc, ic)
        cl = self.km_l.differentiable_centres(nl, il)
        perm = greedy_match(self.km_c.centres, self.km_l.centres)
        return {"or": orthogonality(l_sp, l_sh) + orthogonality(c_sp, c_sh),
                "uni": uniformity(c_sp) + uniformity(l_sp),
                "glo": global_structure(*((c_sh, l_sh) if self.params.glo_on == "shared"
                                          else (e_c, e_l)),
                                        self.params.glo_reduction, self.params.glo_centre,
                                        self.params.glo_constant,
                                        l_sq if self.params.glo_on == "representations"
                                        else None),
                "loc": local_structure(cc, cl, perm)}

    def forward(self, out: Any) -> dict[str, torch.Tensor]:
        extras = getattr(out, "extras", None) or {}
        if "user_ids" in extras:
            # sampled propagation: the representations are this step's subgraph rows (global
            # ids in extras); sample N-hat of those that have a semantic vector
            nodes = torch.cat([extras["user_ids"], extras["item_ids"] + self.n_users])
            local = torch.nonzero(self.has_sem[nodes]).flatten()
            m = min(self.params.n_sample, local.numel())
            local = local[torch.randperm(local.numel(), generator=self._gen)[:m]]
            local, e_c = _gather_rows(out.all_users, out.all_items, local)
            idx = nodes[local]
        else:
            idx, e_c = _gather_rows(out.all_users, out.all_items, self.sample())
        parts = self.terms(e_c, self._semantic_rows(idx), self.sem_sq.index_select(0, idx))
        self.last_parts = {k: float(v.detach()) for k, v in parts.items()}
        lam, tw = self.params.weight, self.params.term_weights
        losses = {f"align_darec_{k}": lam * tw.get(k, 1.0) * v for k, v in parts.items()}
        if self.reg_weight:
            losses["align_reg"] = self.reg_weight * own_l2(self)
        return losses
