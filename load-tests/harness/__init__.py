"""The bench's machinery: backend, stacks, strategies, accounting, k6, reports."""
