# vllm-prune for GPU nodes: vLLM's own OpenAI image plus this package.
# A first version; the deployment issue adds a non-root user, a health check
# and environment-driven defaults.
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/vllm-prune
COPY pyproject.toml README.md ./
COPY vllm_prune ./vllm_prune
COPY server ./server
# vLLM 0.32.0 and prometheus_client are already in the base image.
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -c "import vllm_prune.plugin, server.middleware"

EXPOSE 8000
ENTRYPOINT ["vllm-prune", "serve"]
CMD ["llava-hf/llava-1.5-7b-hf", "--host", "0.0.0.0", "--port", "8000"]
