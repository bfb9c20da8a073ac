"""RLMRec-Gen: masked-node reconstruction of semantic vectors from CF representations.

As the paper and the authors' ``lightgcn_gene.py`` / ``aug_utils.NodeMask`` /
``loss_utils.ssl_con_loss``: each step a random ``max(int(mask_ratio * n), 1)`` of all nodes
(users and items together) are replaced in the layer-0 table by one learnable mask token
(initialised to 0) — through :meth:`layer0_hook`, so the backbone's BPR loss of the same step
uses the masked forward, as in the reference. The final representations of the masked nodes go
through sigma_up (``Linear(d, (d_s+d)//2) -> LeakyReLU -> Linear(., d_s)``) and reconstruct
their own semantic vectors::

    x = normalize(sigma_up(h_masked)), y = normalize(s_masked)
    recon = recon_weight * mean_i -log( exp(x_i.y_i/tau) / (sum_j exp(x_i.y_j/tau) + 1e-8) + 1e-8 )

Masked nodes without a semantic vector are masked (the mask is over all nodes) but left out of
the reconstruction. Under sampled propagation the hook receives the step's subgraph rows: the
same fraction of *those* nodes is masked and their semantic vectors are found through the
subgraph's global ids (``RecOutput.extras``) — the reference's all-node masking restricted to the
nodes the step propagates. ``reg_weight`` is the reference's L2 over the module's own parameters
(mask token and MLP), defaulting to the backbone's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recalign.align.base import Alignment, register_alignment
from recalign.align.precision import Bf16, autocast, resolve_bf16
from recalign.align.rlmrec_con import backbone_reg_weight, own_l2, projection_mlp
from recalign.align.semantic import SemanticVectors


class GenParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mask_ratio: float = Field(0.15, gt=0, le=1, description="fraction of all nodes masked per step")
    recon_weight: float = Field(0.1, ge=0)
    tau: float = Field(0.5, gt=0, description="reconstruction temperature tau_r")
    reg_weight: float | None = Field(None, ge=0, description="L2 over token + MLP; default: "
                                     "the backbone's reg_weight")
    bf16: Bf16 = Field(False, description="store the semantic vectors in bf16 and run sigma_up "
                       "and the similarity under bf16 autocast; auto: where the hardware "
                       "multiplies bf16 natively (align/precision.py)")


def ssl_con_loss(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean InfoNCE of rows of x against rows of y, positives on the diagonal (reference form)."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    logits = x @ y.T / tau
    pos = torch.exp(torch.diagonal(logits))
    deno = torch.exp(logits).sum(1)
    return -torch.log(pos / (deno + 1e-8) + 1e-8).mean()


@register_alignment("rlmrec-gen")
class RLMRecGen(Alignment):
    Params: ClassVar[type[BaseModel]] = GenParams

    def __init__(self, semantic: SemanticVectors, dim: int, params: GenParams | None = None,
                 *, reg_weight: float = 0.0, layer0_dim: int | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.params = params or GenParams()
        self.reg_weight = self.params.reg_weight if self.params.reg_weight is not None else reg_weight
        # the token lives in layer 0; sigma_up reads final representations, which can be wider
        # (GCCF concatenates its layers)
        self.mask_token = nn.Parameter(torch.zeros(1, layer0_dim or dim))
        self.mlp = projection_mlp(dim, semantic.dim)
        sem, mask = semantic.all_nodes()
        self.bf16 = resolve_bf16(self.params.bf16, device)  # "auto": on the training device
        if self.bf16:  # half the memory, and autocast converts nothing per step
            sem = sem.bfloat16()
        self.register_buffer("sem", sem, persistent=False)
        self.register_buffer("has_sem", mask, persistent=False)
        self.n_users = semantic.n_users
        self._seeds: torch.Tensor | None = None
        self._rows = 0

    @classmethod
    def build(cls, semantic: SemanticVectors, dim: int, params: dict | GenParams | None = None,
              *, backbone: Any = None, layer0_dim: int | None = None,
              device: torch.device | None = None, **_: Any) -> "RLMRecGen":
        p = params if isinstance(params, GenParams) else GenParams(**(params or {}))
        if layer0_dim is None and backbone is not None:
            layer0_dim = getattr(getattr(backbone, "params", None), "dim", None)
        return cls(semantic, dim, p, reg_weight=backbone_reg_weight(backbone),
                   layer0_dim=layer0_dim, device=device)

    def layer0_hook(self, layer0: torch.Tensor) -> torch.Tensor:
        n = layer0.shape[0]
        k = max(int(n * self.params.mask_ratio), 1)
        seeds = torch.randperm(n, device=layer0.device)[:k]
        self._seeds, self._rows = seeds, n
        return layer0.index_copy(0, seeds, self.mask_token.expand(k, -1).to(layer0.dtype))

    def _masked_nodes(self, out: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Global node ids (users, then items offset by n_users) of the masked rows."""
        extras = getattr(out, "extras", None) or {}
        if "user_ids" in extras:  # sampled propagation: rows are this step's subgraph nodes
            nodes = torch.cat([extras["user_ids"], extras["item_ids"] + self.n_users])
        else:
            nodes = None
        expected = self.sem.shape[0] if nodes is None else nodes.numel()
        if self._rows != expected:
            raise ValueError(f"layer-0 table has {self._rows} rows, expected {expected} "
                             + ("(the subgraph's nodes)" if nodes is not None
                                else "(the users+items the semantic vectors cover)"))
        return seeds if nodes is None else nodes.index_select(0, seeds)

    def forward(self, out: Any) -> dict[str, torch.Tensor]:
        seeds, self._seeds = self._seeds, None
        if seeds is None:
            raise RuntimeError("rlmrec-gen: no masked nodes for this step; the training loop "
                               "must pass alignment.layer0_hook to rec_forward")
        nodes = self._masked_nodes(out, seeds)
        keep = self.has_sem[nodes]
        seeds, nodes = seeds[keep], nodes[keep]
        losses: dict[str, torch.Tensor] = {}
        if seeds.numel():
            enc = torch.cat([out.all_users, out.all_items], 0).index_select(0, seeds)
            with autocast(self.bf16, enc.device):
                x = self.mlp(enc)
                recon = ssl_con_loss(x, self.sem.index_select(0, nodes), self.params.tau)
            losses["align_gen"] = self.params.recon_weight * recon.float()
        else:
            losses["align_gen"] = out.all_users.new_zeros(())
        if self.reg_weight:
            losses["align_reg"] = self.reg_weight * own_l2(self)
        return losses
