"""Output schemas and the parser/validator every engine output goes through.

The profile schema (REFERENCE.md, RLMRec): ``{"summarization": str, "reasoning": str}``, no other
keys. Length bounds appear three times: as a ``pattern`` of at most N words (constrained
decoders with regular expressions, xgrammar, enforce the paper's word bound while decoding), as
``maxLength`` in characters (decoders without patterns stop a string instead of running to
``max_tokens``) and as word bounds (``x-maxWords``, checked here). Validation also rejects degenerate, looping text (a small
model's typical failure under constraints), so that it is retried instead of stored.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

MIN_SUMMARY_CHARS = 20
MIN_REASONING_CHARS = 10
MAX_WORD_CHARS = 14  # longer "words" are a small model's degenerate runs ("]]]]]]]...")
# the character bound the word pattern implies (each word and its space)
CHARS_PER_WORD = MAX_WORD_CHARS + 1


def words_pattern(max_words: int, min_words: int = 1) -> str:
    """A regular expression for ``min_words``..``max_words`` words separated by single spaces.

    Sent to constrained decoders (xgrammar in vLLM and transformers), it makes the word bound
    part of the grammar: a small model can no longer run past it, which was the most common
    reason for a retry (a fifth of the demo's first attempts). Words exclude the characters a
    JSON string would have to escape, and are at most ``MAX_WORD_CHARS`` long, so the pattern
    also keeps the ``maxLength`` of :func:`profile_schema` (``CHARS_PER_WORD`` per word).
    Before the pattern, ``maxLength`` was 5 characters per word so that it alone implied the
    word bound; with it, that proxy only cut sound answers short."""
    word = f'[^ \\t\\n\\r"\\\\]{{1,{MAX_WORD_CHARS}}}'
    return f"^{word}( {word}){{{max(0, min_words - 1)},{max_words - 1}}}$"


def profile_schema(summary_words: int, reasoning_words: int) -> dict[str, Any]:
    """The JSON schema of one profile, with length bounds."""
    return {
        "type": "object",
        "properties": {
            "summarization": {"type": "string", "minLength": MIN_SUMMARY_CHARS,
                              "maxLength": summary_words * CHARS_PER_WORD,
                              "pattern": words_pattern(summary_words, 3),
                              "x-maxWords": summary_words},
            "reasoning": {"type": "string", "minLength": MIN_REASONING_CHARS,
                          "maxLength": reasoning_words * CHARS_PER_WORD,
                          "pattern": words_pattern(reasoning_words, 2),
                          "x-maxWords": reasoning_words},
        },
        "required": ["summarization", "reasoning"],
        "additionalProperties": False,
    }


def engine_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without our own ``x-`` keywords (what is sent to decoders and servers).

    Where a string has a ``pattern``, its character bounds are left out: xgrammar cannot
    combine them with a pattern (it drops them with a warning per request), the pattern bounds
    the length itself, and the validator still checks them."""
    if isinstance(schema, dict):
        drop = {"minLength", "maxLength"} if "pattern" in schema else set()
        return {k: engine_schema(v) for k, v in schema.items()
                if not k.startswith("x-") and k not in drop}
    if isinstance(schema, list):
        return [engine_schema(v) for v in schema]
    return schema


def max_tokens_for(schema: dict[str, Any]) -> int:
    """A completion cap that fits every string at its maxLength at 2 characters per token
    (English prose is ~4; digit runs are 1, and such degenerate outputs are cut and retried)."""
    total = 0
    for prop in schema.get("properties", {}).values():
        total += int(prop.get("maxLength", 200)) // 2 + 8
    return total + 24


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)
_WORD = re.compile(r"\w+", re.U)


def _looping(text: str) -> str | None:
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 16:
        return None
    grams = Counter(zip(words, words[1:], words[2:]))
    gram, n = grams.most_common(1)[0]
    if n >= 4 and n * 3 > len(words) * 0.3:
        return f"degenerate repetition ({' '.join(gram)!r} x{n})"
    if len(set(words)) < 0.25 * len(words):
        return f"degenerate repetition ({len(set(words))} distinct of {len(words)} words)"
    return None


def _check(value: Any, schema: dict[str, Any], path: str) -> str | None:
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return f"{path or 'output'}: expected an object, got {type(value).__name__}"
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                return f"{path or 'output'}: missing key {key!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{path or 'output'}: unexpected key(s) {extra}"
        for key, sub in props.items():
            if key in value:
                err = _check(value[key], sub, f"{path}.{key}" if path else key)
                if err:
                    return err
        return None
    if kind == "string":
        if not isinstance(value, str):
            return f"{path}: expected a string, got {type(value).__name__}"
        text = value.strip()
        if len(text) < schema.get("minLength", 0):
            return f"{path}: too short ({len(text)} characters, minimum {schema['minLength']})"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path}: too long ({len(value)} characters, maximum {schema['maxLength']})"
        n_words = len(text.split())
        if "x-maxWords" in schema and n_words > schema["x-maxWords"]:
            return f"{path}: too long ({n_words} words, maximum {schema['x-maxWords']})"
        return _looping(text) and f"{path}: {_looping(text)}"
    if kind == "array":
        if not isinstance(value, list):
            return f"{path}: expected an array"
        for i, v in enumerate(value):
            err = _check(v, schema.get("items", {}), f"{path}[{i}]")
            if err:
                return err
        return None
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{path}: expected an integer"
    if kind == "number" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return f"{path}: expected a number"
    return None


def parse_and_validate(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """``(value, None)`` for a valid output, ``(None, reason)`` otherwise. Never raises."""
    if not text or not text.strip():
        return None, "empty output"
    body = text.strip()
    m = _FENCE.match(body)
    if m:  # servers without constrained decoding sometimes fence the JSON
        body = m.group(1)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        snippet = body[max(0, exc.pos - 20):exc.pos + 20]
        return None, f"not valid JSON ({exc.msg} at character {exc.pos}: {snippet!r})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"
    err = _check(value, schema, "")
    if err:
        return None, err
    if isinstance(value, dict):
        value = {k: (v.strip() if isinstance(v, str) else v) for k, v in value.items()}
    return value, None
