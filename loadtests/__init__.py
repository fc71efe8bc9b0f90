"""Load tests and benchmarks of a vllm-prune server, on vLLM's own ``vllm bench serve``."""
