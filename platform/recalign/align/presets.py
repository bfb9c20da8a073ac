"""Published per-backbone RLMRec-Con / RLMRec-Gen settings (REFERENCE.md; HKUDS/RLMRec configs).

``ALIGN_PRESETS[method][backbone][preset] = {"model": {...}, "align": {...}}``: the backbone
settings the authors used *with* that alignment (they differ from the base rows: e.g. LightGCN
+Gen on Amazon-book uses 2 layers and reg 1e-7) and the alignment's own weights.
:func:`resolve` merges a preset with explicit overrides; :func:`model_overrides` keeps only the
keys a backbone's parameter model knows (the other backbones' parameter names are theirs).
DaRec has no published settings; its defaults come from the validation search recorded in
``docs/results.md``.
"""

from __future__ import annotations

from typing import Any

from recalign.errors import ConfigError

AB, YELP, STEAM = "rlmrec-amazon-book", "rlmrec-yelp", "rlmrec-steam"


def _two(model: tuple[dict, dict], align: tuple[dict, dict]) -> dict[str, dict[str, dict]]:
    return {AB: {"model": model[0], "align": align[0]}, YELP: {"model": model[1], "align": align[1]}}


_SGL = {"layers": 3, "reg_weight": 1e-5, "cl_weight": 0.1, "temperature": 0.2}
_SIMGCL = {"layers": 3, "reg_weight": 1e-5, "cl_weight": 0.1, "temperature": 0.2}
_DCCF = {"layers": 2, "reg_weight": 1e-4, "cl_weight": 1e-3, "temperature": 0.1}

ALIGN_PRESETS: dict[str, dict[str, dict[str, dict[str, dict[str, Any]]]]] = {
    "rlmrec-con": {
        "lightgcn": {
            AB: {"model": {"layers": 3, "reg_weight": 1e-7}, "align": {"kd_weight": 1e-2, "tau": 0.2}},
            YELP: {"model": {"layers": 3, "reg_weight": 1e-7}, "align": {"kd_weight": 1e-2, "tau": 0.2}},
            STEAM: {"model": {"layers": 3, "reg_weight": 1e-8}, "align": {"kd_weight": 1e-3, "tau": 0.1}},
        },
        "gccf": _two(({"layers": 2, "reg_weight": 1e-6}, {"layers": 2, "reg_weight": 1e-6}),
                     ({"kd_weight": 1e-3, "tau": 0.1}, {"kd_weight": 1e-3, "tau": 0.2})),
        "sgl": _two((_SGL, _SGL), ({"kd_weight": 1e-2, "tau": 0.5}, {"kd_weight": 1e-2, "tau": 1.0})),
        "simgcl": _two((_SIMGCL, _SIMGCL),
                       ({"kd_weight": 1e-2, "tau": 0.2}, {"kd_weight": 1e-2, "tau": 0.1})),
        "dccf": _two((_DCCF, _DCCF), ({"kd_weight": 1e-2, "tau": 0.5}, {"kd_weight": 1e-2, "tau": 0.2})),
        "autocf": _two(({"gcn_layers": 2, "reg_weight": 1e-6, "ssl_reg": 1.0},
                        {"gcn_layers": 2, "reg_weight": 1e-8, "ssl_reg": 1.0}),
                       ({"kd_weight": 0.1, "tau": 0.5, "neg_term": False},
                        {"kd_weight": 1e-2, "tau": 0.1, "neg_term": False})),
    },
    "rlmrec-gen": {
        "lightgcn": {
            AB: {"model": {"layers": 2, "reg_weight": 1e-7},
                 "align": {"mask_ratio": 0.15, "recon_weight": 0.1, "tau": 0.5}},
            YELP: {"model": {"layers": 2, "reg_weight": 1e-7},
                   "align": {"mask_ratio": 0.05, "recon_weight": 0.01, "tau": 0.1}},
            STEAM: {"model": {"layers": 2, "reg_weight": 1e-6},
                    "align": {"mask_ratio": 0.15, "recon_weight": 0.1, "tau": 0.5}},
        },
        "gccf": _two(({"layers": 2, "reg_weight": 1e-7}, {"layers": 2, "reg_weight": 1e-6}),
                     ({"mask_ratio": 0.1, "recon_weight": 0.01, "tau": 0.1},
                      {"mask_ratio": 0.05, "recon_weight": 0.01, "tau": 1.0})),
        "sgl": _two((_SGL, _SGL), ({"mask_ratio": 0.2, "recon_weight": 0.1, "tau": 0.2},
                                   {"mask_ratio": 0.15, "recon_weight": 0.1, "tau": 0.2})),
        "simgcl": _two((_SIMGCL, _SIMGCL), ({"mask_ratio": 0.05, "recon_weight": 0.1, "tau": 0.2},
                                            {"mask_ratio": 0.01, "recon_weight": 0.01, "tau": 0.05})),
        "dccf": _two((_DCCF, _DCCF), ({"mask_ratio": 0.05, "recon_weight": 0.1, "tau": 0.2},
                                      {"mask_ratio": 0.05, "recon_weight": 0.01, "tau": 0.1})),
        "autocf": _two(({"gcn_layers": 2, "reg_weight": 1e-6, "ssl_reg": 1.0},
                        {"gcn_layers": 2, "reg_weight": 1e-8, "ssl_reg": 1.0}),
                       ({"mask_ratio": 0.2, "recon_weight": 1.0, "tau": 0.5},
                        {"mask_ratio": 0.2, "recon_weight": 0.1, "tau": 0.1})),
    },
}


def resolve(method: str, backbone: str, preset: str | None) -> dict[str, dict[str, Any]]:
    """``{"model": ..., "align": ...}`` published for (method, backbone, preset); {} parts if none."""
    if preset is None or method not in ALIGN_PRESETS:
        return {"model": {}, "align": {}}
    by_backbone = ALIGN_PRESETS[method].get(backbone)
    if by_backbone is None or preset not in by_backbone:
        known = sorted(by_backbone) if by_backbone else []
        raise ConfigError(f"align.preset: no published {method} setting for backbone "
                          f"{backbone!r} and preset {preset!r} (known for {backbone}: "
                          f"{', '.join(known) or 'none'})")
    entry = by_backbone[preset]
    return {"model": dict(entry["model"]), "align": dict(entry["align"])}


def model_overrides(backbone_cls: Any, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The overrides whose keys the backbone's ``Params`` model has, and the dropped keys."""
    params = getattr(backbone_cls, "Params", None)
    fields = set(getattr(params, "model_fields", {}) or {})
    kept = {k: v for k, v in overrides.items() if k in fields}
    return kept, sorted(set(overrides) - set(kept))


def backbone_dim(backbone: Any) -> int:
    """Width of the backbone's final representations (GCCF concatenates its layers, so this
    is not always ``params.dim``): an ``out_dim`` attribute, else one no-grad forward."""
    dim = getattr(backbone, "out_dim", None)
    if dim is None and hasattr(backbone, "graph") and backbone.graph is None:
        # LightGCN built for sampled propagation has no full graph to run a forward on; its
        # final representations (a sum of layers) keep the layer-0 width
        dim = backbone.params.dim
    if dim is None:
        import torch

        with torch.no_grad():
            users, _ = backbone.eval_representations()
        backbone.invalidate_cache()
        dim = users.shape[1]
    return int(dim)


def align_model_overrides(align_cfg: Any, backbone_name: str) -> dict[str, Any]:
    """Backbone parameters the published alignment preset sets (``{}`` without a preset)."""
    from recalign.models.registry import get_backbone

    model = resolve(align_cfg.method, backbone_name, align_cfg.preset)["model"]
    kept, _ = model_overrides(get_backbone(backbone_name), model)
    return kept


def build_from_config(align_cfg: Any, backbone: Any, *, user_map: Any, item_map: Any,
                      semantic: Any = None, **extra: Any) -> Any:
    """The alignment ``align_cfg`` describes, on ``backbone``, for a dataset's id maps.

    ``semantic``: already loaded :class:`SemanticVectors` (else read from
    ``align.semantic.users/items``); ``extra`` goes to the alignment (``group``, ``reduce_fn``,
    ``rank`` for distributed DaRec)."""
    from recalign.align.base import build_alignment
    from recalign.align.precision import precision_of
    from recalign.align.semantic import load_semantic

    if align_cfg.method == "none":
        align = build_alignment("none")
        align.summary = {"method": "none"}
        return align
    if semantic is None:
        semantic = load_semantic(align_cfg.semantic.users, align_cfg.semantic.items, user_map,
                                 item_map, shuffle=align_cfg.semantic_shuffle,
                                 seed=align_cfg.shuffle_seed)
    elif align_cfg.semantic_shuffle and not semantic.shuffled:
        semantic = semantic.shuffle(align_cfg.shuffle_seed)
    params = {**resolve(align_cfg.method, backbone.name, align_cfg.preset)["align"],
              **align_cfg.params}
    try:
        align = build_alignment(align_cfg.method, semantic=semantic, dim=backbone_dim(backbone),
                                params=params, backbone=backbone, **extra)
    except Exception as exc:  # pydantic errors name the key; say which section it is
        from pydantic import ValidationError
        if isinstance(exc, ValidationError):
            raise ConfigError("; ".join(
                f"align.params.{'.'.join(map(str, e['loc']))}: "
                f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
                for e in exc.errors())) from None
        raise
    # for the run summary: the vectors matched (entities without one are counted there) and
    # the precision "auto" resolved to on this machine
    align.summary = {"method": align_cfg.method, "semantic": semantic.summary,
                     "precision": precision_of(align)}
    return align
