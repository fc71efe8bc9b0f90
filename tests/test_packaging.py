"""What a user installs: the wheel's files and requirements, what serving imports, and the
layers of the package (each imports only the ones below it)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import vllm_prune

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(vllm_prune.__file__).parent

# Each part of the package and the parts it may import (besides itself).
LAYERS = {
    "methods": set(),
    "observability": {"methods"},
    "spec": {"methods"},
    "demo": set(),
    "auto": set(),
    "layout": {"methods"},
    "learned_rows": set(),
    "plan": {"methods", "observability", "layout"},
    "signals": {"methods", "plan"},
    "integration": {
        "methods",
        "observability",
        "spec",
        "layout",
        "learned_rows",
        "plan",
        "signals",
        "auto",
    },
    "server": {"methods", "observability", "spec", "integration", "demo", "auto"},
    "eval": {"methods", "observability", "spec"},
    "cli": {"server", "eval"},
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("vllm_prune-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(member).decode()


def test_the_wheel_holds_the_runtime_package_only(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"vllm_prune"}  # no top-level `server`, no devtools, tests or load tests
    assert _metadata(wheel, "top_level.txt").split() == ["vllm_prune"]
    for needed in (
        "vllm_prune/integration/compat.py",
        "vllm_prune/integration/plugin.py",
        "vllm_prune/server/middleware.py",
        "vllm_prune/methods/params.py",
        "vllm_prune/assets/shapes-llava/model.safetensors",
        "vllm_prune/assets/shapes-llava/tokenizer.json",
    ):
        assert needed in names
    assert not [n for n in names if "train_shapes" in n or "tiny_" in n or n.endswith(".pyc")]


def test_the_wheel_requires_prometheus_client_alone_and_extras_for_the_rest(wheel):
    metadata = Parser().parsestr(_metadata(wheel, "METADATA"))
    required = metadata.get_all("Requires-Dist")
    plain = [r for r in required if "extra ==" not in r]
    assert plain == ["prometheus_client>=0.20"]
    extras = {}
    for requirement in required:
        if "extra ==" in requirement:
            spec, extra = requirement.split(";")
            extras.setdefault(extra.split("==")[1].strip().strip('"'), []).append(spec.strip())
    assert extras["gpu"] == ["vllm>=0.32"]
    assert extras["docs"] == ["mkdocs-material==9.8.1"]  # the site: mkdocs.yml, docs/
    assert {r.split(">")[0].split("=")[0] for r in extras["eval"]} >= {
        "datasets", "openai", "tqdm", "matplotlib",
    }  # fmt: skip
    entry_points = _metadata(wheel, "entry_points.txt")
    assert "vllm-prune = vllm_prune.cli:main" in entry_points
    assert "vllm_prune = vllm_prune.integration.plugin:register" in entry_points


SERVING_IMPORTS = """
import sys
import vllm_prune.cli
from vllm_prune.server import serve, middleware
from vllm_prune.integration import plugin, llava, generic, qwen2_vl
plugin.register()
serve.serve_parser()
print(" ".join(sorted(sys.modules)))
"""


def test_serving_imports_neither_the_eval_harness_nor_the_development_tools():
    """The server's, the plugin's and every family's imports (vLLM itself brings openai
    and tqdm; the eval extra's datasets and matplotlib must not come)."""
    done = subprocess.run(
        [sys.executable, "-c", SERVING_IMPORTS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT / "tests",  # away from the checkout's devtools/ and loadtests/
    )
    assert done.returncode == 0, done.stderr
    modules = done.stdout.split()
    assert "vllm_prune.integration.qwen2_vl" in modules  # the imports did happen
    unwanted = [
        m
        for m in modules
        if m.startswith("vllm_prune.eval")
        or m.split(".")[0] in {"devtools", "loadtests", "datasets", "matplotlib"}
    ]
    assert unwanted == []


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "vllm_prune" and len(parts) > 1 else None


def _imports(file: Path) -> set[str]:
    """The ``vllm_prune`` modules (and devtools, loadtests) ``file`` imports."""
    own = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = own if file.name == "__init__.py" else own.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] in {"vllm_prune", "devtools", "loadtests"}}


def test_every_part_imports_only_the_parts_below_it():
    wrong = []
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        assert part in LAYERS, f"{relative}: a new part of the package; place it in LAYERS"
        for module in sorted(_imports(file)):
            target = _part(module)
            if module.split(".")[0] != "vllm_prune":
                wrong.append(f"{relative} imports {module} (not installed with the package)")
            elif target is not None and target != part and target not in LAYERS[part]:
                if target in LAYERS:  # a module, not a name of vllm_prune/__init__
                    wrong.append(f"{relative} imports {module}")
    assert wrong == []


def test_signals_import_the_method_interface_and_no_method():
    """What a model measures is defined by the needs table (``methods.base``), not by a
    method: ``signals`` may read the interface and the shared parameters, nothing more."""
    allowed = {"vllm_prune.methods.base", "vllm_prune.methods.params"}
    wrong = []
    for file in sorted((PACKAGE / "signals").rglob("*.py")):
        for module in sorted(_imports(file)):
            if _part(module) == "methods" and not any(
                module == a or module.startswith(f"{a}.") for a in allowed
            ):
                wrong.append(f"{file.name} imports {module}")
    assert wrong == []
    assert "vllm_prune.methods.base.TOKEN_AXIS" in _imports(PACKAGE / "signals" / "observe.py")


def test_the_layer_check_sees_imports():
    """The layer check reads relative and absolute imports: it is not vacuous."""
    server = _imports(PACKAGE / "server" / "serve.py")
    assert "vllm_prune.integration.compat" in server
    observe = _imports(PACKAGE / "signals" / "observe.py")
    assert "vllm_prune.plan.PrunePlan" in observe and "vllm_prune.signals.scout" in observe
