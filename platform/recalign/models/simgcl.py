"""SimGCL (Yu et al., SIGIR 2022): augmentation-free contrastive learning with uniform noise.

As RLMRec's reference (HKUDS/RLMRec ``general_cf/simgcl.py``, ``simgcl.yml``), restated:

* the LightGCN encoder on the full ``Â`` (no edge dropout: ``keep_rate 1.0``), final = sum of
  layers 0..L;
* a noisy view adds ``Δ = ε · normalize(U[0,1)) ⊙ sign(E(l))`` (row norm exactly ε,
  :func:`recalign.models.augment.uniform_noise`) to **each** propagated layer ``l = 1..L``; the
  perturbed layer feeds the next one; layer 0 is not perturbed; two independent views;
* BPR on the clean forward; InfoNCE between the two noisy views for the batch's users and
  positive items only (no negative-item term), candidates all users / all items of view 2, rows
  not deduplicated, summed / batch size × ``cl_weight``; L2 over both full tables.

Reuses :class:`recalign.models.sgl.SGL` (same encoder, loss assembly and InfoNCE); only the view
and the negative-item term differ. Full and sampled propagation as SGL; shardable ID tables.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from recalign.data.graph import NormalizedGraph
from recalign.models.augment import uniform_noise
from recalign.models.registry import register_backbone
from recalign.models.sgl import SGL, GraphCLParams, graph_cl_presets


class SimGCLParams(GraphCLParams):
    eps: float = Field(0.9, ge=0, description="L2 norm of each noise row")


#: HKUDS/RLMRec simgcl.yml; REFERENCE.md "Other backbones" (SimGCL base row)
PRESETS: dict[str, dict[str, object]] = graph_cl_presets(
    {"temperature": 0.2, "eps": 0.9}, {"temperature": 0.2, "eps": 0.9},
    {"temperature": 0.5, "eps": 0.2},
    layers=3, reg_weight=1e-5, cl_weight=0.1)


@register_backbone("simgcl")
class SimGCL(SGL):
    Params: ClassVar[type[BaseModel]] = SimGCLParams
    PRESETS: ClassVar[dict[str, dict[str, object]]] = PRESETS
    cl_on_negatives: ClassVar[bool] = False

    def _augmentation(self, graph: NormalizedGraph) -> dict:
        eps = self.params.eps
        return {"after_layer": lambda h: h + uniform_noise(h, eps)}
