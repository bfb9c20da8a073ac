"""Optimizers for ID tables: fbgemm fused (update inside backward) where supported, else dense.

fbgemm's table-batched embedding kernel (``SplitTableBatchedEmbeddingBagsCodegen``) fuses the
optimizer into the backward pass. Which optimizers it offers depends on the device
(fbgemm-gpu-cpu 1.8.0, ``split_table_batched_embeddings_ops_training.py``):

* CPU: ``EXACT_SGD``, ``EXACT_ADAGRAD``, ``EXACT_ROWWISE_ADAGRAD`` (and an EMA row-wise
  Adagrad) only — constructing it with ``ADAM`` raises "Optimizer adam is not supported in
  CPU mode".
* CUDA: additionally ``ADAM``, ``PARTIAL_ROWWISE_ADAM``, ``LAMB``, ...

The reference recipe (RLMRec/SSLRec) is Adam, lr 1e-3, no weight decay, with the L2 term inside
the loss. So on CPU, Adam runs on the *dense* path: the tables stay TorchRec modules, their rows
receive ordinary gradients and ``torch.optim.Adam`` updates them. For full-graph propagation,
where every row is read and updated every step, the dense update is the same work as a fused
one (there is nothing sparse to exploit); see ``benchmarks/train_cf.py`` for measurements.
``kernel="auto"`` picks fused where the device supports the optimizer, dense otherwise.

fbgemm's fused Adam applies ``weight_decay`` decoupled (AdamW-like); the reference's L2 is
coupled through the loss, which is what the backbones do, so keep ``weight_decay = 0`` here.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from recalign.errors import ConfigError

OptimName = Literal["adam", "adagrad", "rowwise_adagrad", "sgd"]
KernelName = Literal["auto", "dense", "fused"]

# fbgemm optimizers available per compute device (fbgemm-gpu 1.8)
_FUSED_SUPPORT: dict[str, set[str]] = {
    "cpu": {"sgd", "adagrad", "rowwise_adagrad"},
    "cuda": {"sgd", "adagrad", "rowwise_adagrad", "adam"},
}


class TableOptimizerSpec(BaseModel):
    """Optimizer for ID tables and any other trainable parameters of a model."""

    model_config = ConfigDict(extra="forbid")

    name: OptimName = "adam"
    lr: float = Field(1e-3, gt=0)
    eps: float = Field(1e-8, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0, description="decoupled for fused Adam, L2 for dense "
                                "torch optimizers; the CF recipes keep 0 and put L2 in the loss")
    kernel: KernelName = Field("auto", description="fused: fbgemm optimizer inside backward; "
                               "dense: torch optimizer on table gradients; auto: fused if the "
                               "device's fbgemm kernel supports the optimizer")


def fused_supported(name: str, device: torch.device | str = "cpu") -> bool:
    return name in _FUSED_SUPPORT.get(torch.device(device).type, set())


def fused_table_optimizer(setting: str) -> Any:
    """The ``table_optimizer`` field of a model whose rows live in sharded TorchRec tables when
    ``setting`` says so (e.g. ``"item_table: sharded"``); checked by :func:`fused_spec`."""
    return Field(default_factory=lambda: {"name": "rowwise_adagrad", "lr": 0.05},
                 description=f"{setting} only: the fused optimizer of the table rows "
                 "(recalign.tables.optim.TableOptimizerSpec; on CPU fbgemm fuses sgd, adagrad, "
                 "rowwise_adagrad)")


def fused_spec(raw: dict[str, Any], device: torch.device | str, setting: str
               ) -> TableOptimizerSpec:
    """``model.params.table_optimizer`` as a spec, refused unless fbgemm fuses it on
    ``device`` (the sharded tables update inside backward only)."""
    spec = TableOptimizerSpec(**raw)
    dev = torch.device(device).type
    if not fused_supported(spec.name, dev):
        raise ConfigError(f"model.params.table_optimizer {spec.name!r} has no fused fbgemm "
                          f"kernel on {dev}; {setting} needs one (on {dev}: "
                          f"{', '.join(sorted(_FUSED_SUPPORT.get(dev, set()))) or 'none'})")
    return spec


def _table_state(param_key: str, state_key: str) -> tuple[str, str]:
    """(table, state name) of one fused-optimizer state entry. One process (TorchRec's fused
    collection): ``user.weight`` / ``user.weight.momentum_1``; sharded (DMP): ``<module
    path>.embedding_bags.user.weight`` / ``user.momentum1``."""
    return param_key.rsplit(".", 2)[-2], state_key.rsplit(".", 1)[-1].replace("_", "")


def fused_state(opt: Any) -> dict[str, dict[str, Any]]:
    """A fused table optimizer's row state as ``{table: {state: tensor}}`` — the same keys
    whether the tables are sharded or not, so that a checkpoint written by N ranks loads on M
    (torch.distributed.checkpoint reshards the tensors by their row offsets). The tensors are
    the optimizer's own; :func:`load_fused_state` puts loaded values back."""
    out: dict[str, dict[str, Any]] = {}
    for pkey, states in opt.state_dict()["state"].items():
        for skey, value in states.items():
            table, name = _table_state(pkey, skey)
            out.setdefault(table, {})[name] = value
    return out


def load_fused_state(opt: Any, state: dict[str, dict[str, Any]]) -> None:
    """Load :func:`fused_state`'s layout into ``opt`` (hyperparameters stay the config's)."""
    native = opt.state_dict()
    for pkey, states in native["state"].items():
        for skey in states:
            table, name = _table_state(pkey, skey)
            states[skey] = state[table][name]
    opt.load_state_dict(native)


def resolve_kernel(spec: TableOptimizerSpec, device: torch.device | str = "cpu") -> str:
    """"dense" or "fused" for this optimizer on this device; an explicit impossible choice errors."""
    dev = torch.device(device).type
    if spec.kernel == "dense":
        return "dense"
    ok = fused_supported(spec.name, dev)
    if spec.kernel == "fused" and not ok:
        raise ConfigError(
            f"optimizer {spec.name!r} has no fused fbgemm kernel on {dev} (fused on {dev}: "
            f"{', '.join(sorted(_FUSED_SUPPORT.get(dev, set()))) or 'none'}); use kernel: dense "
            "or auto")
    return "fused" if ok else "dense"


def torchrec_fused_args(spec: TableOptimizerSpec) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """(optimizer class, kwargs) for ``FusedEmbeddingBagCollection``."""
    from torchrec.optim import RowWiseAdagrad

    if spec.name == "adam":
        return torch.optim.Adam, {"lr": spec.lr, "eps": spec.eps, "beta1": spec.betas[0],
                                  "beta2": spec.betas[1], "weight_decay": spec.weight_decay}
    if spec.name == "adagrad":
        return torch.optim.Adagrad, {"lr": spec.lr, "eps": spec.eps,
                                     "weight_decay": spec.weight_decay}
    if spec.name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": spec.lr, "eps": spec.eps, "weight_decay": spec.weight_decay}
    return torch.optim.SGD, {"lr": spec.lr, "weight_decay": spec.weight_decay}


def sharder_fused_params(spec: TableOptimizerSpec) -> dict[str, Any]:
    """``fused_params`` for TorchRec's ``EmbeddingBagCollectionSharder`` (``fused`` kernel)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    opt = {"adam": EmbOptimType.ADAM, "adagrad": EmbOptimType.EXACT_ADAGRAD,
           "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
           "sgd": EmbOptimType.EXACT_SGD}[spec.name]
    out: dict[str, Any] = {"optimizer": opt, "learning_rate": spec.lr, "eps": spec.eps,
                           "weight_decay": spec.weight_decay}
    if spec.name == "adam":
        out.update(beta1=spec.betas[0], beta2=spec.betas[1])
    return out


def dense_optimizer(params: Iterable[torch.nn.Parameter],
                    spec: TableOptimizerSpec) -> "torch.optim.Optimizer | OptimizerChain | None":
    """A torch optimizer over ``params`` (None if there are none)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                weight_decay=spec.weight_decay, foreach=True)
    if spec.name == "adagrad":
        return torch.optim.Adagrad(params, lr=spec.lr, eps=spec.eps,
                                   weight_decay=spec.weight_decay)
    if spec.name == "rowwise_adagrad":
        from torchrec.optim import RowWiseAdagrad

        # row-wise state needs rows: matrices (dense tables, MLP weights) get it, vectors
        # (biases) get plain Adagrad; torchrec's RowWiseAdagrad fails on 1-d parameters
        rows = [p for p in params if p.dim() >= 2]
        flat = [p for p in params if p.dim() < 2]
        parts = ([RowWiseAdagrad(rows, lr=spec.lr, eps=spec.eps,
                                 weight_decay=spec.weight_decay)] if rows else []) + \
            ([torch.optim.Adagrad(flat, lr=spec.lr, eps=spec.eps,
                                  weight_decay=spec.weight_decay)] if flat else [])
        return parts[0] if len(parts) == 1 else OptimizerChain(parts)
    return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay)


class OptimizerChain:
    """Several torch optimizers over disjoint parameters behind one optimizer's interface."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for p in self.parts for g in p.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parts:
            p.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for p in self.parts:
            p.step()

    def state_dict(self) -> dict:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for p, s in zip(self.parts, state["parts"], strict=True):
            p.load_state_dict(s)


class ModelOptimizer:
    """One ``zero_grad``/``step`` for a model whose tables may update themselves in backward.

    Parameters owned by fused tables (``IdTables.fused_parameter_ids``) are left to the fused
    kernel; everything else (dense tables, MLPs of an alignment module, ...) goes to one torch
    optimizer built from the same spec.
    """

    def __init__(self, modules: Iterable[torch.nn.Module], spec: TableOptimizerSpec) -> None:
        fused_ids: set[int] = set()
        params: list[torch.nn.Parameter] = []
        seen: set[int] = set()
        fused = []
        for m in modules:
            for sub in m.modules():
                ids = getattr(sub, "fused_parameter_ids", None)
                if callable(ids):
                    fused_ids |= ids()
                    opt = sub.fused_optimizer()
                    if opt is not None:
                        fused.append(opt)
            for p in m.parameters():
                if id(p) in seen or id(p) in fused_ids:
                    continue
                seen.add(id(p))
                params.append(p)
        self.spec = spec
        self.dense = dense_optimizer(params, spec)
        self.fused = fused

    def zero_grad(self) -> None:
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.dense is not None:
            self.dense.step()
        # fused tables already applied their update during backward
