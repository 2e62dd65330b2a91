"""Domain, persistence and counting engine of the distributed counter (no Chalice imports)."""
