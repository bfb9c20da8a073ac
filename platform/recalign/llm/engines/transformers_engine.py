"""The transformers engine: batched ``generate`` (CPU or GPU) with JSON-schema-constrained
decoding through xgrammar's transformers logits processor (the grammar engine vLLM itself
uses), the fallback where vLLM is not installed. Outputs are validated like every engine's.

Seeds: ``generate`` samples a whole batch from one torch generator, so the batch is seeded
with a hash of its requests' seeds: reproducible for the same batch, and a retry (new seeds)
draws new samples. Temperature 0 is greedy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from recalign.llm.engine import (GenerationEngine, GenerationRequest, GenerationResult,
                                 register_generation)
from recalign.llm.models import model_label, resolve_model
from recalign.llm.schemas import engine_schema


def _torch_dtype(name: str, cuda: bool) -> Any:
    import torch
    if name == "auto":
        if not cuda:  # emulated bf16 on a CPU without AVX512-BF16/AMX is slower than fp32
            from recalign.align.precision import native_bf16

            return torch.bfloat16 if native_bf16("cpu") else torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16,
            "float32": torch.float32, "float": torch.float32}[name]


class TransformersEngine(GenerationEngine):
    name = "transformers"

    def __init__(self, cfg: Any, *, model_path: str | None = None, constrained: bool = True) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model_path = model_path or resolve_model(cfg.model, cfg.cache_dir)
        self._label = model_label(cfg.model, self.model_path)
        cuda = torch.cuda.is_available() and cfg.num_gpus > 0
        self.device = torch.device("cuda" if cuda else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = {"dtype": _torch_dtype(cfg.dtype, cuda), **cfg.engine_kwargs}
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs).to(self.device)
        self.model.eval()
        self.constrained = constrained
        self._compiler = None
        self._grammars: dict[str, Any] = {}
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)

    @property
    def model_label(self) -> str:
        return self._label

    def _grammar(self, schema: dict[str, Any]) -> Any:
        import xgrammar as xgr

        key = json.dumps(engine_schema(schema), sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.model.config.vocab_size,
                    stop_token_ids=sorted(self.eos_ids))
                self._compiler = xgr.GrammarCompiler(info)
            # compact JSON (as vLLM's disable_any_whitespace): free whitespace lets a small model
            # emit blanks after the last value until max_new_tokens
            self._grammars[key] = self._compiler.compile_json_schema(
                key, any_whitespace=False, separators=(",", ":"))
        return self._grammars[key]

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # one generate per group of equal sampling settings (normally one group)
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for sampling, idx in groups.items():
            for i, res in zip(idx, self._generate_group([requests[i] for i in idx], sampling)):
                results[i] = res
        return results  # type: ignore[return-value]

    def _generate_group(self, requests: list[GenerationRequest], s: Any) -> list[GenerationResult]:
        import torch

        texts = [self.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True,
                                                    tokenize=False) for r in requests]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        kw: dict[str, Any] = {"max_new_tokens": s.max_tokens,
                              "pad_token_id": self.tokenizer.pad_token_id,
                              "repetition_penalty": s.repetition_penalty}
        if s.temperature > 0:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None)
        if self.constrained:
            from xgrammar.contrib.hf import LogitsProcessor
            kw["logits_processor"] = [LogitsProcessor([self._grammar(r.schema) for r in requests])]
        seed_src = ",".join(str(r.seed) for r in requests).encode()
        torch.manual_seed(int.from_bytes(hashlib.sha256(seed_src).digest()[:4], "little"))
        with torch.inference_mode():
            out = self.model.generate(**enc, **kw)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for r, ids, plen in zip(requests, new, prompt_lens):
            stop = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
            gen = ids if stop is None else ids[:stop]
            text = self.tokenizer.decode(gen, skip_special_tokens=True)
            results.append(GenerationResult(r.id, text, int(plen),
                                            len(gen) + (0 if stop is None else 1),
                                            "length" if stop is None else "stop"))
        return results

    def close(self) -> None:
        self.model = None


@register_generation("transformers")
def _make(cfg: Any) -> TransformersEngine:
    return TransformersEngine(cfg)
