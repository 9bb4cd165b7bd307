"""Model building blocks: linear (quant-aware), norm, rotary, embedding, attention layer."""
