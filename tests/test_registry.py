"""One registry helper (recalign.registry) behind sources, backbones, alignments and engines:
lazy imports, clear errors, the registering module checked, and no import circles."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from recalign.errors import ConfigError
from recalign.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing of recalign imported yet); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# ------------------------------------------------------------------ the helper itself
@pytest.fixture
def plugin_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway package: ``reg`` holds a registry, ``plug_a`` registers 'a' into it."""
    name = f"regtest_{tmp_path.name.replace('-', '_')}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "reg.py").write_text(textwrap.dedent(f"""
        from recalign.registry import Registry
        THINGS = Registry("thing", {{"a": "{name}.plug_a", "gone": "{name}.not_written"}},
                          key="x.thing")
    """))
    (pkg / "plug_a.py").write_text(textwrap.dedent(f"""
        from {name}.reg import THINGS

        @THINGS.register("a")
        def make_a():
            return "A"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_get_imports_the_module_on_first_use_only(plugin_pkg: str) -> None:
    reg = __import__(f"{plugin_pkg}.reg", fromlist=["THINGS"]).THINGS
    assert reg.names() == ["a", "gone"]  # listing imports nothing
    assert "a" in reg and "nope" not in reg
    assert f"{plugin_pkg}.plug_a" not in sys.modules
    assert reg.get("a")() == "A"
    assert f"{plugin_pkg}.plug_a" in sys.modules
    assert reg.get("a") is sys.modules[f"{plugin_pkg}.plug_a"].make_a


def test_unknown_name_names_kind_name_and_known_names(plugin_pkg: str) -> None:
    reg = __import__(f"{plugin_pkg}.reg", fromlist=["THINGS"]).THINGS
    with pytest.raises(ConfigError) as exc:
        reg.get("b")
    assert str(exc.value) == "x.thing: unknown thing 'b'; known things: a, gone"


def test_listed_module_that_does_not_exist(plugin_pkg: str) -> None:
    reg = __import__(f"{plugin_pkg}.reg", fromlist=["THINGS"]).THINGS
    with pytest.raises(ModuleNotFoundError):
        reg.get("gone")
    assert list(reg.load_all()) == ["a"]  # left out, not an error


def test_register_checks_the_module_and_duplicates(plugin_pkg: str) -> None:
    reg = __import__(f"{plugin_pkg}.reg", fromlist=["THINGS"]).THINGS
    # 'a' belongs to plug_a: this test module may not register it
    with pytest.raises(ValueError, match=rf"thing 'a' must be registered by {plugin_pkg}\.plug_a"):
        reg.register("a")(lambda: "fake")

    def new() -> str:
        return "new"

    assert reg.register("new")(new) is new  # a name not in the lazy map: anyone may add it
    assert reg.get("new") is new and "new" in reg.names()
    reg.register("new")(new)  # the same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("new")(lambda: "other")


def test_optional_deps_turn_import_errors_into_config_errors(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    name = f"regtest_opt_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("import no_such_package_for_recalign_tests\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[object] = Registry("engine", {"x": name}, key="llm.engine", optional_deps=True)
    with pytest.raises(ConfigError, match=r"llm\.engine: engine 'x' is not usable here: .*"
                                          r"no_such_package_for_recalign_tests"):
        reg.get("x")
    strict: Registry[object] = Registry("engine", {"x": name})
    with pytest.raises(ModuleNotFoundError):
        strict.get("x")


# ------------------------------------------------------------------ the four registries
def test_each_registry_lists_its_names() -> None:
    from recalign.align.base import ALIGNMENTS, known_alignments
    from recalign.data.sources import SOURCES
    from recalign.llm.engine import EMBEDDING_ENGINES, GENERATION_ENGINES
    from recalign.models.registry import known_backbones

    assert SOURCES.names() == ["amazon-reviews", "amazon-sequences", "csv", "movielens",
                               "parquet", "rlmrec", "synthetic", "unisrec"]
    assert known_backbones() == ["autocf", "bert4rec", "cl4srec", "cllm4rec", "dccf", "duorec",
                                 "fdsa", "gccf", "gru4rec", "lightgcn", "llmrg", "multivae",
                                 "sasrec",
                                 "semantic-only", "sgl", "simgcl", "srgnn"]
    assert known_alignments() == ALIGNMENTS.names() == ["darec", "none", "rlmrec-con",
                                                        "rlmrec-gen"]
    assert GENERATION_ENGINES.names() == ["openai", "transformers", "vllm"]
    assert EMBEDDING_ENGINES.names() == ["openai", "sentence-transformers", "vllm"]


def test_each_registry_error_names_kind_and_known_names() -> None:
    from recalign.align.base import build_alignment
    from recalign.config import EmbedConfig, LLMConfig
    from recalign.data.sources import get_source
    from recalign.llm.engine import build_embedding_engine, build_generation_engine
    from recalign.models.registry import get_backbone

    cases = [
        (lambda: get_source("nope"), "data.source: unknown source 'nope'; known sources: "
                                     "amazon-reviews, amazon-sequences, csv, "),
        (lambda: get_backbone("nope"), "model.backbone: unknown backbone 'nope'; known "
                                       "backbones: autocf, bert4rec, cl4srec, cllm4rec, dccf, "),
        (lambda: build_alignment("nope"), "align.method: unknown alignment 'nope'; known "
                                          "alignments: darec, none, rlmrec-con, rlmrec-gen"),
        (lambda: build_generation_engine(LLMConfig.model_construct(engine="nope")),
         "llm.engine: unknown generation engine 'nope'; known generation engines: openai, "
         "transformers, vllm"),
        (lambda: build_embedding_engine(EmbedConfig.model_construct(engine="nope")),
         "embed.engine: unknown embedding engine 'nope'; known embedding engines: openai, "
         "sentence-transformers, vllm"),
    ]
    for call, want in cases:
        with pytest.raises(ConfigError) as exc:
            call()
        assert str(exc.value).startswith(want), str(exc.value)


def test_the_four_registries_import_lazily() -> None:
    """Importing a registry or listing its names imports no entry; ``get`` imports just one."""
    out = run_fresh("""
        import sys

        def loaded(prefix):
            return sorted(m for m in sys.modules if m.startswith(prefix))

        from recalign.data.sources import SOURCES, get_source
        SOURCES.names()
        print(loaded("recalign.data.sources."))
        get_source("movielens")
        print(loaded("recalign.data.sources."))

        from recalign.models.registry import get_backbone, known_backbones
        known_backbones()
        print(loaded("recalign.models."))
        get_backbone("gccf")
        print(loaded("recalign.models."))

        from recalign.align.base import build_alignment, known_alignments
        known_alignments()
        build_alignment("none")
        print(loaded("recalign.align."))
        from recalign.align.base import ALIGNMENTS
        ALIGNMENTS.get("rlmrec-gen")
        print(loaded("recalign.align."))

        from recalign.llm.engine import EMBEDDING_ENGINES, GENERATION_ENGINES
        GENERATION_ENGINES.names(), EMBEDDING_ENGINES.names()
        print(loaded("recalign.llm.engines."))
        EMBEDDING_ENGINES.get("openai")
        print(loaded("recalign.llm.engines."))
    """).splitlines()
    src = "recalign.data.sources."
    assert out[0] == str([src + "base"])
    # movielens reuses tabular's readers; no other source comes along
    assert src + "movielens" in out[1] and src + "amazon" not in out[1] \
        and src + "synthetic" not in out[1]
    assert out[2] == str(["recalign.models.base", "recalign.models.registry"])
    assert "recalign.models.gccf" in out[3]
    assert not any(f"recalign.models.{m}'" in out[3]
                   for m in ("lightgcn", "sgl", "simgcl", "dccf", "autocf", "semantic_only"))
    assert out[4] == str(["recalign.align.base"])
    # rlmrec-gen reuses rlmrec-con's projection MLP, so that module comes along (registering it)
    assert "recalign.align.rlmrec_gen" in out[5] and "recalign.align.darec" not in out[5]
    assert out[6] == str([])
    assert out[7] == str(["recalign.llm.engines.openai_engine"])


def test_cf_backbones_are_the_graph_backbones() -> None:
    from recalign.models.registry import BACKBONES, cf_backbones

    cf = cf_backbones()  # imports every model whose module exists
    assert cf == ["autocf", "dccf", "gccf", "lightgcn", "sgl", "simgcl"]  # no semantic-only,
    assert set(cf) <= set(BACKBONES.names())                             # no sequential model


@pytest.mark.parametrize("module", ["recalign.data.ingest", "recalign.data.snapshot_io",
                                    "recalign.models.registry", "recalign.models.lightgcn"])
def test_importing_first_has_no_circle(module: str) -> None:
    """Each module imported first in a fresh interpreter works (a circle would fail here)."""
    out = run_fresh(f"""
        import sys
        import {module}
        print(sorted(m for m in sys.modules if m in (
            "recalign.data.ingest", "recalign.data.snapshot_io", "recalign.models.lightgcn")))
        from recalign.models.registry import get_backbone
        print(get_backbone("lightgcn").__name__)
    """).splitlines()
    assert out[-1] == "LightGCN"
    if module == "recalign.data.ingest":
        assert "recalign.data.snapshot_io" not in out[0]  # ingest no longer needs snapshot_io
    if module == "recalign.models.registry":
        assert "recalign.models.lightgcn" not in out[0]  # the registry imports no model


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_import_circle_even_inside_functions() -> None:
    """The circles are gone, not just deferred: ingest never imports snapshot_io (the reader
    both need lives in dataset_snapshot), and the backbone registry imports no model."""
    lib = ROOT / "platform" / "recalign"
    assert "recalign.data.snapshot_io" not in _imports(lib / "data" / "ingest.py")
    assert not {m for m in _imports(lib / "data" / "dataset_snapshot.py")
                if m.startswith(("recalign.data.ingest", "recalign.data.snapshot_io"))}
    models = {p.stem for p in (lib / "models").glob("*.py")} - {"__init__", "base", "registry"}
    assert "lightgcn" in models
    reg_imports = _imports(lib / "models" / "registry.py")
    assert not {m for m in reg_imports if m.split(".")[-1] in models}, reg_imports
    for name in ("align/base.py", "llm/engine.py", "data/sources/base.py"):
        assert not {m for m in _imports(lib / name)
                    if m.startswith(("recalign.align.", "recalign.llm.engines",
                                     "recalign.data.sources."))
                    and m not in ("recalign.align.base", "recalign.data.sources.base")}, name
