"""The nightly pipeline: stage order, keys, markers (no Ray; the job is jobs/nightly.py)."""
