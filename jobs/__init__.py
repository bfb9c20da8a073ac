"""Entrypoints: one module per job (``python -m recalign.jobs.NAME``) and the ``recalign`` CLI."""

# job name -> module; the CLI builds one subcommand per entry
JOBS = {
    "ingest": "recalign.jobs.ingest",
    "snapshots": "recalign.jobs.snapshots",
    "models": "recalign.jobs.models",
    "profiles": "recalign.jobs.profiles",
    "embed": "recalign.jobs.embed",
    "graphs": "recalign.jobs.graphs",
    "train": "recalign.jobs.train",
    "cllm4rec": "recalign.jobs.cllm4rec",
    "nightly": "recalign.jobs.nightly",
    "demo": "recalign.jobs.demo",
    "export": "recalign.jobs.export",
    "query": "recalign.jobs.query",
}
