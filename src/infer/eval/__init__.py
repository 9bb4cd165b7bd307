"""Accuracy and throughput measurement on top of the engine.

data (texts and token windows), scoring (logits through the engine's real runner),
perplexity, divergence from a reference configuration, greedy agreement, workloads,
the bench loop, the peer baselines (HF transformers, vLLM CPU, OpenVINO GenAI) and the
Pareto front.
"""
