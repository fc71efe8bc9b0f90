"""The deployment files, checked with real tools (no Docker engine or cluster needed).

hadolint (Dockerfiles), shellcheck (the entrypoint), kubernetes-validate (built-in
Kubernetes kinds), the Prometheus Operator's CRD models (ServiceMonitor,
PrometheusRule), the Compose specification, promtool (config, rules, alert unit
tests, PromQL syntax) and vLLM's own argument parser (every server command line
that a manifest builds). `make test` installs them all; a missing tool fails its
test instead of skipping it, so CI cannot go green without the check.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = [ROOT / "Dockerfile", DEPLOY / "Dockerfile.cpu"]
ENTRYPOINT = DEPLOY / "entrypoint.sh"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vllm-prune.json"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
# Kubernetes versions to validate against: the oldest and newest that
# kubernetes-validate ships schemas for.
K8S_VERSIONS = ["1.25", "1.37"]
# Kinds without a schema in kubernetes-validate, and how each is checked instead.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # cloudcoil's CRD models
LWS_KIND = "LeaderWorkerSet"  # its pod templates as core PodTemplates
# What the dashboard must show (the metrics the deployment issue asks for).
DASHBOARD_METRICS = {
    "vllm_prune_visual_tokens_before_total",
    "vllm_prune_visual_tokens_after_total",
    "vllm_prune_kv_cache_bytes_saved_total",
    "vllm_prune_requests_total",
    "vllm_prune_time_to_first_token_seconds_bucket",
    "vllm_prune_e2e_request_latency_seconds_bucket",
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
}
# Grafana's variables, replaced by a window Prometheus accepts before PromQL checks.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1m"}


def tool(name: str) -> str:
    """A tool from the venv (pip-installed linters) or PATH (Debian's promtool)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (see the Makefile)")
    return found


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifests() -> list[tuple[Path, dict]]:
    """Every Kubernetes document under deploy/k8s/ (the adapter's Helm values are none)."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path != ADAPTER_VALUES:
            docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def manifest(kind: str, name: str) -> dict:
    [doc] = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, Grafana variables filled in."""
    exprs = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def adapter_query() -> str:
    """The adapter rule's metricsQuery with its Go template filled in as the adapter does."""
    [rule] = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    series = rule["seriesQuery"].split("{")[0]
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"vllm-prune-.*"')
        .replace("<<.GroupBy>>", "pod")
    )


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: ours, vLLM's and the HTTP ones."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are no names
    return set(re.findall(r"\b(?:vllm[:_][\w:]*|http_[\w:]*)", expr))


def referenced_metrics() -> set[str]:
    """Every metric name that the dashboard, the alerts and the autoscaling read."""
    exprs = [*dashboard_exprs(), *alert_exprs(), adapter_query()]
    return set().union(*(metric_names(expr) for expr in exprs))


# --- Docker ---------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path):
    result = run(tool("hadolint"), str(dockerfile))
    assert_ok(result)
    assert result.stdout == ""  # any finding, even "info", is a failure


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_in_the_build_context(dockerfile: Path):
    # No Docker engine here: a COPY of a missing or .dockerignored path would
    # only fail at `docker build`, so check it now.
    ignored = _dockerignore_patterns()
    copies = [
        line.split()[1:-1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ")
    ]
    assert copies
    for source in (s for sources in copies for s in sources):
        assert (ROOT / source).exists(), source
        assert not any(
            fnmatch.fnmatch(source, pattern) or source.startswith(pattern.rstrip("/") + "/")
            for pattern in ignored
        ), f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_the_entrypoint_as_non_root_with_a_health_check(dockerfile: Path):
    text = dockerfile.read_text()
    assert 'ENTRYPOINT ["/opt/vllm-prune/entrypoint.sh"]' in text
    assert re.search(r"^USER 2000:2000$", text, re.M)
    assert re.search(r'^\s+CMD \["python3", "/opt/vllm-prune/healthcheck.py"\]$', text, re.M)


def test_shellcheck_entrypoint():
    assert_ok(run(tool("shellcheck"), "--severity=style", str(ENTRYPOINT)))


def run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The entrypoint in its dry-run mode, in an environment of ``env`` only."""
    clean = {"PATH": os.environ["PATH"], "VLLM_PRUNE_DRY_RUN": "1", **env}
    return run("bash", str(ENTRYPOINT), *args, env=clean)


def entrypoint_argv(env: dict[str, str], *args: str) -> list[str]:
    """The `vllm-prune serve` arguments the entrypoint builds; the API key (a Secret's
    in the manifests) is in the environment, as every deployment file sets it."""
    result = run_entrypoint({"VLLM_API_KEY": "from-a-secret", **env}, *args)
    assert_ok(result)
    words = shlex.split(result.stdout)
    assert words[:2] == ["vllm-prune", "serve"]
    return words[2:]


def test_entrypoint_takes_defaults_from_the_environment():
    env = {
        "VLLM_PRUNE_MODEL": "org/model",
        "VLLM_PRUNE_DEFAULT": "pooling",
        "VLLM_PRUNE_RATIO": "0.5",
        "VLLM_PRUNE_PORT": "9000",
        "VLLM_PRUNE_ARGS": "--tensor-parallel-size 2\n  --max-model-len 4096 ",
    }
    assert entrypoint_argv(env) == [
        "org/model",
        "--host", "0.0.0.0",
        "--port", "9000",
        "--prune-default", "pooling",
        "--prune-ratio", "0.5",
        "--tensor-parallel-size", "2", "--max-model-len", "4096",
    ]  # fmt: skip


def test_entrypoint_arguments_override_the_environment():
    env = {"VLLM_PRUNE_MODEL": "org/model", "VLLM_PRUNE_DEFAULT": "pooling"}
    argv = entrypoint_argv(
        env, "other/model", "--prune-default", "random", "--served-model-name", "a b"
    )
    # The model argument replaces the variable; later options win in vLLM's parser.
    assert argv[0] == "other/model" and "org/model" not in argv
    assert argv[-5:] == ["pooling", "--prune-default", "random", "--served-model-name", "a b"]


def test_entrypoint_without_a_model_serves_the_demo():
    assert entrypoint_argv({}) == ["--host", "0.0.0.0", "--port", "8000"]


def test_entrypoint_refuses_to_serve_without_an_api_key():
    refused = run_entrypoint({})
    assert refused.returncode == 2 and refused.stdout == ""
    assert "set VLLM_API_KEY" in refused.stderr and "VLLM_PRUNE_NO_API_KEY=1" in refused.stderr
    for env, args in (
        ({"VLLM_PRUNE_NO_API_KEY": "1"}, ()),  # the operator's explicit choice
        ({}, ("--api-key", "k")),
        ({}, ("--api-key=k",)),
    ):
        started = run_entrypoint(env, *args)
        assert_ok(started)
        assert started.stdout.startswith("vllm-prune serve "), (env, args)


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """The ENV defaults of a Dockerfile (one `NAME=value` per line of the ENV block)."""
    return dict(
        re.findall(
            r"^\s*(?:ENV\s+)?(VLLM_PRUNE_\w+)=(\S*?)(?:\s*\\)?$", dockerfile.read_text(), re.M
        )
    )


def _compose_env() -> dict[str, str]:
    """The server's environment in the compose file, each ${VAR:-default} at its default."""
    env = load_yaml(COMPOSE)["services"]["vllm-prune"]["environment"]
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}


def server_command_lines() -> dict[str, list[str]]:
    """Every `vllm-prune serve` command line the deployment files start, by where it comes from."""
    deployment = manifest("Deployment", "vllm-prune")["spec"]["template"]["spec"]["containers"][0]
    lws = manifest(LWS_KIND, "vllm-prune-multinode")["spec"]["leaderWorkerTemplate"]
    leader = lws["leaderTemplate"]["spec"]["containers"][0]
    assert leader["args"][0].endswith("exec /opt/vllm-prune/entrypoint.sh")
    return {
        "Dockerfile": entrypoint_argv(_dockerfile_env(DOCKERFILES[0])),
        "Dockerfile.cpu": entrypoint_argv(_dockerfile_env(DOCKERFILES[1])),
        "docker-compose.yml": entrypoint_argv(_compose_env()),
        "k8s/deployment.yaml": entrypoint_argv(_env(deployment)),
        "k8s/multinode/leaderworkerset.yaml": entrypoint_argv(_env(leader)),
    }


# Parses the argument lists (JSON on stdin) the way `vllm-prune serve` does.
PARSE_SERVE_ARGS = """
import json, sys
from vllm_prune.integration.compat import serve_cli
from vllm_prune.server.serve import serve_parser

parser = serve_parser()
parsed = {}
for name, argv in json.load(sys.stdin).items():
    args = parser.parse_args(argv)
    serve_cli().validate_parsed_serve_args(args)
    parsed[name] = {key: getattr(args, key) for key in (
        "model_tag", "port", "prune_default", "prune_ratio", "tensor_parallel_size",
        "pipeline_parallel_size", "distributed_executor_backend")}
print(json.dumps(parsed))
"""


@pytest.fixture(scope="module")
def parsed_command_lines() -> dict[str, dict]:
    result = run(
        sys.executable, "-c", PARSE_SERVE_ARGS, input=json.dumps(server_command_lines()), cwd=ROOT
    )
    assert_ok(result)
    return json.loads(result.stdout.splitlines()[-1])


def test_every_server_command_line_parses(parsed_command_lines):
    assert parsed_command_lines["Dockerfile.cpu"]["model_tag"] is None  # the demo model
    for name, args in parsed_command_lines.items():
        assert args["port"] == 8000, name
    deployment = parsed_command_lines["k8s/deployment.yaml"]
    assert (deployment["prune_default"], deployment["prune_ratio"]) == ("pooling", 0.75)


def _gpus(container: dict) -> int:
    return int(container["resources"]["limits"]["nvidia.com/gpu"])


def test_parallelism_matches_the_gpus(parsed_command_lines):
    pod = manifest("Deployment", "vllm-prune")["spec"]["template"]["spec"]
    single = parsed_command_lines["k8s/deployment.yaml"]
    assert single["tensor_parallel_size"] * single["pipeline_parallel_size"] == _gpus(
        pod["containers"][0]
    )

    lws = manifest(LWS_KIND, "vllm-prune-multinode")["spec"]["leaderWorkerTemplate"]
    leader = lws["leaderTemplate"]["spec"]["containers"][0]
    worker = lws["workerTemplate"]["spec"]["containers"][0]
    multi = parsed_command_lines["k8s/multinode/leaderworkerset.yaml"]
    assert multi["distributed_executor_backend"] == "ray"
    assert _gpus(leader) == _gpus(worker)
    # One tensor-parallel group over the whole group's GPUs: vllm-prune refuses stages.
    assert multi["tensor_parallel_size"] == lws["size"] * _gpus(leader)
    assert multi["pipeline_parallel_size"] == single["pipeline_parallel_size"] == 1


# --- Kubernetes -----------------------------------------------------------------------


def test_every_manifest_kind_has_a_validator():
    import kubernetes_validate

    for path, doc in manifests():
        if doc["kind"] in OPERATOR_KINDS | {LWS_KIND}:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{path}: no validator for {doc['apiVersion']} {doc['kind']}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_builtin_kinds(version: str):
    files = sorted(
        {str(p) for p, doc in manifests() if doc["kind"] not in OPERATOR_KINDS | {LWS_KIND}}
    )
    assert len(files) >= 4  # Deployment, Service, HPA, the multi-node Service
    result = run(tool("kubernetes-validate"), "--strict", "-k", version, *files)
    assert_ok(result)
    assert "WARN" not in result.stdout + result.stderr


def test_prometheus_operator_resources_match_the_crd_schemas():
    # cloudcoil's models are generated from the operator's CRDs (types, enums,
    # patterns). Pydantic drops unknown keys, so a round trip that loses
    # anything means a misspelt or misplaced field.
    from cloudcoil.models.prometheus_operator import v1

    checked = 0
    for path, doc in manifests():
        if doc["kind"] in OPERATOR_KINDS:
            model = getattr(v1, doc["kind"]).model_validate(doc)
            dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
            assert dumped == doc, f"{path}: fields outside the {doc['kind']} schema"
            checked += 1
    assert checked == 2


def test_leaderworkerset_pod_templates_validate():
    # No package ships the LeaderWorkerSet CRD schema: its two pod templates are
    # validated as core PodTemplates, its own few fields against the v1 API.
    import kubernetes_validate

    lws = manifest(LWS_KIND, "vllm-prune-multinode")
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert set(lws["spec"]) <= {
        "replicas",
        "leaderWorkerTemplate",
        "rolloutStrategy",
        "startupPolicy",
    }
    group = lws["spec"]["leaderWorkerTemplate"]
    assert set(group) <= {"size", "restartPolicy", "leaderTemplate", "workerTemplate"}
    assert group["restartPolicy"] in {"RecreateGroupOnPodRestart", "None"}
    assert isinstance(group["size"], int) and group["size"] >= 2
    for role in ("leaderTemplate", "workerTemplate"):
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": role.lower()},
            "template": group[role],
        }
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(template, version, strict=True)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_manifests_fit_together():
    deployment = manifest("Deployment", "vllm-prune")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    service = manifest("Service", "vllm-prune")
    monitor = manifest("ServiceMonitor", "vllm-prune")
    hpa = manifest("HorizontalPodAutoscaler", "vllm-prune")

    # Service -> pods, by label and named port; the port is the one the entrypoint serves.
    assert _matches(service["spec"]["selector"], pod["metadata"]["labels"])
    [port] = container["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"] == "http"
    assert port["containerPort"] == int(_env(container)["VLLM_PRUNE_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    # The image's user and cache directory.
    assert pod["spec"]["securityContext"]["runAsUser"] == 2000
    assert {"name": "cache", "mountPath": "/home/vllm/.cache"} in container["volumeMounts"]

    # ServiceMonitor -> both Services (single- and multi-node), on their http port.
    multinode = manifest("Service", "vllm-prune-multinode")
    for svc in (service, multinode):
        assert _matches(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The multi-node Service reaches the leader pods only (the server runs there).
    lws = manifest(LWS_KIND, "vllm-prune-multinode")["spec"]["leaderWorkerTemplate"]
    leader_labels = {
        **lws["leaderTemplate"]["metadata"]["labels"],
        "leaderworkerset.sigs.k8s.io/name": "vllm-prune-multinode",  # set by the controller
    }
    assert _matches(multinode["spec"]["selector"], leader_labels)
    assert "role" in multinode["spec"]["selector"]

    # HPA -> Deployment, on the metric the adapter rule serves.
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "vllm-prune")
    [rule] = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.fullmatch(rule["name"]["matches"], "vllm:num_requests_waiting")
    assert rule["seriesQuery"].startswith("vllm:num_requests_waiting{")


def test_prometheusrule_carries_the_alerts_of_alerts_yml():
    rule = manifest("PrometheusRule", "vllm-prune")
    assert rule["spec"] == load_yaml(ALERTS)


# --- Prometheus -----------------------------------------------------------------------


def test_promtool_check_config():
    # Also checks the rule files the config names (alerts.yml).
    result = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert_ok(result)
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_check_rules():
    assert_ok(run(tool("promtool"), "check", "rules", str(ALERTS)))


def test_promtool_alert_unit_tests():
    # deploy/prometheus/alerts_test.yml: every alert fires when it should, and only then.
    result = run(tool("promtool"), "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    assert_ok(result)
    tested = set(
        re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    )
    assert tested == {r["alert"] for g in load_yaml(ALERTS)["groups"] for r in g["rules"]}


def test_promql_of_dashboard_and_adapter_parses(tmp_path: Path):
    # promtool parses PromQL offline only inside rule files: one recording rule per expression.
    exprs = [*dashboard_exprs(), adapter_query()]
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert_ok(result)
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# --- Grafana and Compose --------------------------------------------------------------


def test_dashboard_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(set(refs)) == len(refs), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    shown = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert DASHBOARD_METRICS <= shown, DASHBOARD_METRICS - shown


def test_compose_file():
    import compose_spec

    compose = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())  # rejects unknown keys
    compose.validate()
    spec = load_yaml(COMPOSE)
    services, volumes = spec["services"], set(spec["volumes"])
    assert set(services) == {"vllm-prune", "prometheus", "grafana"}
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
    server = services["vllm-prune"]
    assert server["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    [gpu] = server["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]

    # Prometheus scrapes the server service; Grafana reads that Prometheus.
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    [job] = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["vllm-prune:8000"]
    assert "8000:8000" in server["ports"]
    mounts = dict(m.split(":")[:2] for m in services["prometheus"]["volumes"])
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/" + prometheus["rule_files"][0]
    [source] = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    [provider] = load_yaml(DEPLOY / "grafana/provisioning/dashboards/vllm-prune.yml")["providers"]
    grafana_mounts = dict(m.split(":")[:2] for m in services["grafana"]["volumes"])
    assert grafana_mounts["./grafana/dashboards"] == provider["options"]["path"]


def _api_key_source(container: dict) -> dict:
    (entry,) = [e for e in container.get("env", []) if e["name"] == "VLLM_API_KEY"]
    return entry["valueFrom"]["secretKeyRef"]


def test_the_api_runs_with_a_key_from_a_secret():
    """vLLM's --api-key (read from VLLM_API_KEY) on every server the files start; the
    probes (/health) and Prometheus (/metrics) need no key, which tests/test_parallel.py
    checks on a served key."""
    deployment = manifest("Deployment", "vllm-prune")["spec"]["template"]["spec"]["containers"][0]
    lws = manifest(LWS_KIND, "vllm-prune-multinode")["spec"]["leaderWorkerTemplate"]
    leader = lws["leaderTemplate"]["spec"]["containers"][0]
    for container in (deployment, leader):
        ref = _api_key_source(container)
        assert ref == {"name": "vllm-prune-api-key", "key": "api-key"}  # required: not optional
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
    compose = load_yaml(COMPOSE)["services"]["vllm-prune"]["environment"]
    assert compose["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")  # no key, no start
