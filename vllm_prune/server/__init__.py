"""The server: ``vllm-prune serve`` (vLLM's own OpenAI server) and the prune middleware."""
