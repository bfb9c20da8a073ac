"""Shared fixtures. The loopback S3 server lives in s3_server.py (loaded as a plugin)."""

pytest_plugins = ["s3_server"]
