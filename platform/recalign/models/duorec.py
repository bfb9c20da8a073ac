"""DuoRec (Qiu et al., 2022), ``contrast: us_x``: SASRec trained on every prefix with
cross-entropy over all items, plus ``cl_weight`` (λ_sem 0.1) × NT-Xent between a dropout view
of the history (a second forward pass, new dropout masks) and the history of another training
sample with the same target item (drawn per sample, :class:`recalign.data.sequences.SameTarget`),
similarity ``dot``, temperature 1, in-batch negatives (REFERENCE.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recalign.models.cl4srec import ContrastiveSASRecParams
from recalign.models.registry import register_backbone
from recalign.models.contrastive import nt_xent
from recalign.models.sasrec import SASRec
from recalign.models.sequential import LossFn, ViewContext, pad_rows


@register_backbone("duorec")
class DuoRec(SASRec):
    Params = ContrastiveSASRecParams
    needs_same_target = True

    def make_views(self, seqs: list[np.ndarray], rngs: list[np.random.Generator],
                   ctx: ViewContext) -> dict[str, torch.Tensor]:
        st = ctx.same_target
        other = np.array([st.pick(int(g), rng) for g, rng in zip(ctx.samples, rngs)])
        hist = ctx.data.sample_items(st.users[other], st.ends[other], ctx.max_len)
        return {"same_target": pad_rows([h[:-1] for h in hist])}

    def losses(self, batch: Any, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        p = self.params
        rec = self.rec_loss(batch, loss_fn)
        z1 = self.user_repr(batch.inputs)  # the dropout view: a second pass
        z2 = self.user_repr(batch.views["same_target"])
        return {"rec": rec, "cl": p.cl_weight * nt_xent(z1, z2, p.temperature, p.similarity)}
