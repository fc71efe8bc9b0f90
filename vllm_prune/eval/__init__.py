"""Accuracy harness: benchmark loaders and metrics, and the synthetic ``shapes`` benchmark.

Nothing here imports vLLM: the harness talks to a server over HTTP, and its loaders and
metrics are plain Python, testable without a model.
"""
