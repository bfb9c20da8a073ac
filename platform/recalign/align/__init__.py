"""Alignment objectives (RLMRec-Con, RLMRec-Gen, DaRec) behind one interface."""

from recalign.align.base import Alignment, build_alignment, register_alignment

__all__ = ["Alignment", "build_alignment", "register_alignment"]
