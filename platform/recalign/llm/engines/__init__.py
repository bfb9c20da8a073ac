"""Engine implementations, one module each; they register themselves in recalign.llm.engine."""
