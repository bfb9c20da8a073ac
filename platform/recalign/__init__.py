"""recalign: align LLM knowledge with collaborative filtering at industrial scale.

This package (``platform/recalign``) is the engine-agnostic library: it never imports Ray.
Ray building blocks live in ``recalign.operators`` and entrypoints in ``recalign.jobs``.
"""

__version__ = "0.1.0"
