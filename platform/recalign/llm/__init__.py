"""LLM engines (generation with a JSON schema, embedding), prompt builders, output parsing."""
