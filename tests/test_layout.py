"""The package layout: one `recalign` namespace over three folders, no shadowed stdlib."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_platform_from_repo_root_is_stdlib() -> None:
    # platform/ must not be a package: from the repo root it would shadow the stdlib module
    assert not (ROOT / "platform" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import platform, torch, ray; print(platform.__file__); "
         "print(platform.python_version())"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "site-packages" not in out[0] and out[0].endswith("platform.py"), out[0]
    assert not out[0].startswith(str(ROOT)), out[0]
    assert out[1] == ".".join(map(str, sys.version_info[:3]))


def test_namespace_maps_three_folders() -> None:
    import recalign
    import recalign.jobs
    import recalign.operators

    assert Path(recalign.__file__).parent == ROOT / "platform" / "recalign"
    assert Path(recalign.operators.__file__).parent == ROOT / "operators"
    assert Path(recalign.jobs.__file__).parent == ROOT / "jobs"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    dirs = conf["package-dir"]
    found = set()
    for pkg, folder in dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    # subpackages of recalign.operators/jobs are found under their own mapping too
    assert found == listed, f"not listed: {found - listed}; listed but missing: {listed - found}"


def test_library_does_not_import_ray() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "platform").rglob("*.py")
                 if any(line.strip().startswith(("import ray", "from ray"))
                        for line in p.read_text().splitlines())]
    assert offenders == [], f"platform/ must not import ray: {offenders}"
