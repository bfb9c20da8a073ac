"""Canonical dataset, Arrow schemas, id maps, sources, splits."""
