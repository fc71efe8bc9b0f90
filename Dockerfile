# vllm-prune for GPU nodes: vLLM's own OpenAI image plus this package.
#   docker build -t vllm-prune .
#   docker run --gpus all --ipc=host -p 8000:8000 -e VLLM_PRUNE_DEFAULT=pooling vllm-prune
# Settings come from VLLM_PRUNE_* variables (see deploy/entrypoint.sh); arguments
# after the image name are passed to `vllm-prune serve` and win over them.
FROM vllm/vllm-openai:v0.34.0

WORKDIR /opt/vllm-prune
COPY pyproject.toml README.md ./
COPY vllm_prune ./vllm_prune
COPY deploy/entrypoint.sh deploy/healthcheck.py ./
# vLLM 0.34.0 and prometheus_client are already in the base image, so --no-deps;
# the checks fail the build if the plugin cannot load beside that vLLM, or if its
# version gate would not prune on it (a base image of an unchecked vLLM whose
# ledger checks fail).
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -c "import vllm_prune.integration.plugin, vllm_prune.server.middleware" \
    && python3 -c "from vllm_prune.integration.compat import gate; assert gate().pruning, gate().report()"

# Non-root, with a fixed numeric UID that Kubernetes' runAsNonRoot can check.
# HOME holds the Hugging Face, vLLM and Triton caches; mount a volume on
# /home/vllm/.cache to keep downloaded weights across restarts (the directory
# exists in the image, so a fresh Docker volume there is owned by vllm).
RUN useradd --create-home --uid 2000 --user-group vllm \
    && install -d -o vllm -g vllm /home/vllm/.cache
ENV HOME=/home/vllm \
    VLLM_PRUNE_MODEL=llava-hf/llava-1.5-7b-hf \
    VLLM_PRUNE_DEFAULT= \
    VLLM_PRUNE_RATIO= \
    VLLM_PRUNE_HOST=0.0.0.0 \
    VLLM_PRUNE_PORT=8000 \
    VLLM_PRUNE_ARGS=
USER 2000:2000
WORKDIR /home/vllm

EXPOSE 8000
# Loading a 7B model takes minutes: failures before start-period do not count.
HEALTHCHECK --interval=30s --timeout=15s --start-period=15m --retries=3 \
    CMD ["python3", "/opt/vllm-prune/healthcheck.py"]
# CMD []: no default arguments (the base image's would be passed to the entrypoint).
ENTRYPOINT ["/opt/vllm-prune/entrypoint.sh"]
CMD []
