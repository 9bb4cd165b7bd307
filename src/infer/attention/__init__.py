"""Attention backends: per-step planning plus per-layer attend over the KV cache."""
