"""CF backbones behind one interface (:class:`Backbone`) and a registry keyed by config name."""

from recalign.models.base import Backbone, RecOutput
from recalign.models.registry import (build_backbone, cf_backbones, get_backbone, known_backbones,
                                      register_backbone)

__all__ = ["Backbone", "RecOutput", "build_backbone", "cf_backbones", "get_backbone", "known_backbones", "register_backbone"]
