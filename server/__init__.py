"""OpenAI-compatible REST endpoint over `vlm_edge.edge`. Not built yet: see issue 7."""
