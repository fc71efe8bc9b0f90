#!/usr/bin/env bash
# Container entrypoint: `vllm-prune serve` with its defaults taken from the environment.
#
#   VLLM_PRUNE_MODEL    model id or path; empty serves the built-in demo model (shapes-llava)
#   VLLM_PRUNE_DEFAULT  --prune-default: method for requests that name none (empty: none)
#   VLLM_PRUNE_RATIO    --prune-ratio: ratio for requests that give none (empty: 0.75)
#   VLLM_PRUNE_HOST     --host (default 0.0.0.0)
#   VLLM_PRUNE_PORT     --port (default 8000); the image's health check reads it too
#   VLLM_PRUNE_ARGS     more `vllm serve` options, split on whitespace
#   VLLM_PRUNE_DRY_RUN  1 prints the command instead of running it
#   VLLM_API_KEY        vLLM's --api-key, the key clients send (Authorization: Bearer);
#                       required: the container refuses to start without it (or
#                       --api-key among the arguments) unless VLLM_PRUNE_NO_API_KEY=1
#
# Container arguments (CMD, compose `command`, Kubernetes `args`) come last, so
# they override the environment (vLLM's parser keeps an option's last value); a
# first argument that is not an option is the model and replaces VLLM_PRUNE_MODEL.
set -euo pipefail

model=${VLLM_PRUNE_MODEL:-}
if [[ $# -gt 0 && $1 != -* ]]; then
    model=$1
    shift
fi

args=()
if [[ -n $model ]]; then
    args+=("$model")
fi
args+=(--host "${VLLM_PRUNE_HOST:-0.0.0.0}" --port "${VLLM_PRUNE_PORT:-8000}")
if [[ -n ${VLLM_PRUNE_DEFAULT:-} ]]; then
    args+=(--prune-default "$VLLM_PRUNE_DEFAULT")
fi
if [[ -n ${VLLM_PRUNE_RATIO:-} ]]; then
    args+=(--prune-ratio "$VLLM_PRUNE_RATIO")
fi
# Split on spaces and newlines (a YAML block may span lines); no glob expansion.
read -r -d '' -a extra <<<"${VLLM_PRUNE_ARGS:-}" || true  # 1 at the end of input
args+=("${extra[@]}" "$@")

# An image that listens on 0.0.0.0 serves nobody's API without a key by accident.
has_key=${VLLM_API_KEY:+1}
for arg in "${args[@]}"; do
    if [[ $arg == --api-key || $arg == --api-key=* ]]; then
        has_key=1
    fi
done
if [[ -z $has_key && ${VLLM_PRUNE_NO_API_KEY:-0} != 1 ]]; then
    echo "vllm-prune: set VLLM_API_KEY (the key clients must send as 'Authorization: Bearer ...')," \
        "or VLLM_PRUNE_NO_API_KEY=1 to serve the API without a key" >&2
    exit 2
fi

if [[ ${VLLM_PRUNE_DRY_RUN:-0} == 1 ]]; then
    printf '%q ' vllm-prune serve "${args[@]}"
    echo
    exit 0
fi
# exec: the server becomes PID 1 and gets the container's SIGTERM directly.
exec vllm-prune serve "${args[@]}"
