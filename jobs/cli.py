"""The ``recalign`` console command: one subcommand per job module in :data:`JOBS`."""

from __future__ import annotations

import argparse
import importlib
import sys

from recalign import __version__
from recalign.jobs import JOBS
from recalign.jobs.common import add_config_arguments, run_job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recalign", description="Align LLM knowledge with collaborative filtering: "
        "jobs of the recalign platform. Each job prints progress on stderr and, as the last "
        "line of stdout, one JSON summary.")
    parser.add_argument("--version", action="version", version=f"recalign {__version__}")
    sub = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for name, module_name in JOBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        add_config_arguments(p)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_job(args, args._run)


if __name__ == "__main__":
    sys.exit(main())
