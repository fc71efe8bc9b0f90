"""The supported vLLM versions: the ledger against the code, against 0.32 (installed) and
0.33 (its wheel's sources), and the version gate of the plugin and of ``vllm-prune serve``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools import vllm_check
from vllm_prune.integration import compat

OTHER_RELEASE = "0.33.0"  # checked against its sources: no CPU build exists


def test_every_vllm_import_and_override_of_the_code_is_in_the_ledger():
    assert vllm_check.check_code() == []
    # The walk finds what it should: the processor and Qwen overrides among them.
    found = vllm_check.code_overrides()
    assert "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply" in found
    assert any(
        t.endswith("Qwen2VLForConditionalGeneration.get_mrope_input_positions") for t in found
    )
    assert "vllm.multimodal.inputs:MultiModalFieldConfig" in vllm_check.code_imports()


def test_only_the_integration_package_imports_vllm():
    files = {f for found in vllm_check.code_imports().values() for f in found}
    assert files and all(f.startswith("vllm_prune/integration/") for f in files), files


def test_the_ledger_holds_on_the_installed_vllm():
    installed = compat.installed_version()
    assert compat.version_refusal(installed) is None
    assert vllm_check.check_sources(vllm_check.installed_sources(), installed) == []


@pytest.fixture(scope="module")
def other_release():
    try:
        return vllm_check.release_sources(OTHER_RELEASE)
    except vllm_check.SourcesUnavailable as error:
        pytest.fail(
            f"cannot check vLLM {OTHER_RELEASE}: its sources could not be fetched ({error}); "
            f"this check needs PyPI once, then reads {vllm_check.cache_root()}"
        )


def test_the_ledger_holds_on_vllm_0_33_sources(other_release):
    problems = vllm_check.check_sources(
        other_release, OTHER_RELEASE, reference=vllm_check.installed_sources()
    )
    assert problems == []


def test_the_sources_check_sees_what_moved_in_0_33(other_release):
    """The 0.32-only names are really gone in 0.33: the check is not vacuous."""
    sources = vllm_check.Sources(other_release)
    assert sources.tree("vllm.entrypoints.launchers.cli_args") is None
    assert sources.resolve("vllm.entrypoints.common.cli_args", "make_arg_parser") is not None
    assert sources.resolve("vllm.entrypoints.serve.utils.api_utils", "cli_env_setup") is None
    assert sources.member("vllm.model_executor.models.clip", "CLIPAttention.no_such") is None
    moved = [r for r in compat.LEDGER if r.versions == ("0.32",)]
    assert moved and all(r.change for r in moved)


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("0.32.0", True),
        ("0.32.0+cpu", True),
        ("0.33.0", True),
        ("0.33.2.dev4+g1234", True),
        ("0.31.9", False),
        ("0.34.0rc1", False),
        ("1.0.0", False),
        ("unknown", False),
    ],
)
def test_version_gate(version, supported):
    refusal = compat.version_refusal(version)
    assert (refusal is None) == supported
    if not supported:
        assert compat.SUPPORTED in refusal and version in refusal


# A Python process whose vLLM says it is another version.
AS_VERSION = "import vllm; vllm.__version__ = {version!r}\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_outside_the_range_the_plugin_registers_nothing_and_says_so():
    done = _run(
        AS_VERSION.format(version="0.34.0") + "from vllm import ModelRegistry\n"
        "from vllm_prune.integration import plugin\n"
        "plugin.register()\n"
        "print(ModelRegistry._try_load_model_cls('LlavaForConditionalGeneration').__name__)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LlavaForConditionalGeneration"]  # vLLM's own class
    assert done.stderr.count(f"vllm-prune supports vLLM {compat.SUPPORTED}") == 1
    assert "this is vLLM 0.34.0" in done.stderr and "served unpruned" in done.stderr


def test_inside_the_range_the_plugin_registers_the_pruning_classes():
    done = _run(
        "from vllm import ModelRegistry\n"
        "from vllm_prune.integration import plugin\n"
        "plugin.register()\n"
        "print(ModelRegistry._try_load_model_cls('Qwen2VLForConditionalGeneration').__name__)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PruneQwen2VLForConditionalGeneration"]


def test_serve_exits_with_the_supported_versions_outside_the_range():
    done = _run(
        AS_VERSION.format(version="0.31.2") + "from vllm_prune.cli import main\nmain(['serve'])\n"
    )
    assert done.returncode == 1
    assert f"vllm-prune supports vLLM {compat.SUPPORTED}" in done.stderr
    assert "this is vLLM 0.31.2" in done.stderr and "pip install" in done.stderr
