"""Quantization methods: each owns the math of a linear layer's weights."""
