"""KV cache management: block allocation, block tables, prefix reuse policies."""
