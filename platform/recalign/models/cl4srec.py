"""CL4SRec (Xie et al., 2022) as DuoRec's code runs it: SASRec trained on every prefix with
cross-entropy over all items, plus ``cl_weight`` (λ 0.1) × NT-Xent between two augmented views
of each history, each view made by a different operator among crop (η 0.6), mask (γ 0.3) and
reorder (β 0.6) (:mod:`recalign.data.augment`), similarity ``dot``, temperature 1, the other
views of the batch as negatives (REFERENCE.md).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from recalign.data.augment import two_views
from recalign.models.contrastive import nt_xent
from recalign.models.registry import register_backbone
from recalign.models.sasrec import SASRec, SASRecParams
from recalign.models.sequential import LossFn, ViewContext, pad_rows


class ContrastiveSASRecParams(SASRecParams):
    """SASRec plus a contrastive term between two representations of each sample."""

    samples: Literal["windows", "prefixes"] = "prefixes"
    cl_weight: float = Field(0.1, ge=0, description="λ of the contrastive term")
    temperature: float = Field(1.0, gt=0)
    similarity: Literal["dot", "cos"] = "dot"


class CL4SRecParams(ContrastiveSASRecParams):
    crop: float = Field(0.6, gt=0, le=1, description="η: share of the history kept by crop")
    mask: float = Field(0.3, ge=0, le=1, description="γ: share of items masked")
    reorder: float = Field(0.6, ge=0, le=1, description="β: share of items reordered")


@register_backbone("cl4srec")
class CL4SRec(SASRec):
    Params = CL4SRecParams
    extra_tokens = 1  # the mask token of the mask augmentation

    def make_views(self, seqs: list[np.ndarray], rngs: list[np.random.Generator],
                   ctx: ViewContext) -> dict[str, torch.Tensor]:
        p = self.params
        a, b = zip(*(two_views(s[:-1][-p.max_len:], rng, p.crop, p.mask, p.reorder,
                               self.mask_id) for s, rng in zip(seqs, rngs)))
        return {"view1": pad_rows(list(a)), "view2": pad_rows(list(b))}

    def losses(self, batch: Any, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        p = self.params
        z1 = self.user_repr(batch.views["view1"])
        z2 = self.user_repr(batch.views["view2"])
        return {"rec": self.rec_loss(batch, loss_fn),
                "cl": p.cl_weight * nt_xent(z1, z2, p.temperature, p.similarity)}
