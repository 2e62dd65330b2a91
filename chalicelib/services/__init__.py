"""Use cases: validation, limits and orchestration over the repositories."""
