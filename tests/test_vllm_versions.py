"""The supported vLLM versions: the ledger against the code, against 0.32 (installed), 0.33
and 0.34 (their wheels' sources), and the version gate of the plugin, of ``vllm-prune serve``
and of ``GET /v1/prune/methods``: checked releases prune, a newer release prunes where the
ledger's load-time check holds on it and is served unpruned, naming what broke, where not."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import vllm_check
from vllm_prune.integration import compat, ledger_check

OTHER_RELEASES = ("0.33.0", "0.34.0")  # checked against their sources: no CPU build exists
NEWEST = compat.CHECKED[-1]


def test_every_vllm_import_and_override_of_the_code_is_in_the_ledger():
    assert vllm_check.check_code() == []
    # The walk finds what it should: the processor and Qwen overrides among them.
    found = vllm_check.code_overrides()
    assert "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply" in found
    assert any(
        t.endswith("Qwen2VLForConditionalGeneration.get_mrope_input_positions") for t in found
    )
    assert "vllm.multimodal.inputs:MultiModalFieldConfig" in vllm_check.code_imports()
    # Every override's parameters are on record for the load-time check.
    overrides = {r.target for r in compat.LEDGER if r.kind == "override"}
    assert set(ledger_check.PARAMETERS) == overrides


def test_only_the_integration_package_imports_vllm():
    files = {f for found in vllm_check.code_imports().values() for f in found}
    assert files and all(f.startswith("vllm_prune/integration/") for f in files), files


def test_the_ledger_holds_on_the_installed_vllm():
    installed = compat.installed_version()
    assert compat.version_refusal(installed) is None and compat.is_checked(installed)
    release = compat.release(installed)
    assert ledger_check.check_sources(ledger_check.installed_sources(), release) == []


@pytest.fixture(scope="module")
def release_sources():
    """The Python files of each other checked release, downloaded once."""
    try:
        return {v: vllm_check.release_sources(v) for v in OTHER_RELEASES}
    except vllm_check.SourcesUnavailable as error:
        pytest.fail(
            f"cannot check vLLM {OTHER_RELEASES}: sources could not be fetched ({error}); "
            f"this check needs PyPI once, then reads {vllm_check.cache_root()}"
        )


@pytest.mark.parametrize("version", OTHER_RELEASES)
def test_the_ledger_holds_on_each_checked_release(release_sources, version):
    assert ledger_check.check_sources(release_sources[version], compat.release(version)) == []


def test_the_sources_check_sees_what_moved_in_0_33(release_sources):
    """The 0.32-only names are really gone in 0.33 and 0.34: the check is not vacuous."""
    for version in OTHER_RELEASES:
        sources = ledger_check.Sources(release_sources[version])
        assert sources.tree("vllm.entrypoints.launchers.cli_args") is None
        assert sources.resolve("vllm.entrypoints.common.cli_args", "make_arg_parser")
        assert sources.resolve("vllm.entrypoints.serve.utils.api_utils", "cli_env_setup") is None
        assert sources.member("vllm.model_executor.models.clip", "CLIPAttention.no_such") is None
    moved = [r for r in compat.LEDGER if r.versions == ("0.32",)]
    assert moved and all(r.change for r in moved)
    # Run as 0.34, the 0.32-only entries are skipped; run as 0.32, they are found missing.
    assert ledger_check.check_sources(release_sources[NEWEST], "0.32")


@pytest.mark.parametrize(
    ("version", "refused", "checked"),
    [
        ("0.32.0", False, True),
        ("0.32.0+cpu", False, True),
        ("0.33.0", False, True),
        ("0.33.2.dev4+g1234", False, True),
        ("0.34.0", False, True),
        ("0.34.1", False, True),
        ("0.35.0rc1", False, False),  # newer: the load-time check decides
        ("1.0.0", False, False),
        ("0.31.9", True, False),
        ("unknown", True, False),
    ],
)
def test_version_gate(version, refused, checked):
    refusal = compat.version_refusal(version)
    assert (refusal is not None) == refused
    assert compat.is_checked(version) == checked
    if refused:
        assert compat.SUPPORTED in refusal and version in refusal


# -- a newer vLLM than the checked releases, faked: its version string, and its sources ----
# The process's vLLM says it is 0.35.0, and the gate's check reads a tree of vLLM sources
# given by the test (0.34.0's, or a copy with one reliance broken) instead of the installed
# 0.32.0's: what the plugin then registers is read back from vLLM's real model registry.
AS_NEWER = (
    "import vllm; vllm.__version__ = '0.35.0'\n"
    "from pathlib import Path\n"
    "from vllm_prune.integration import ledger_check\n"
    "ledger_check.installed_sources = lambda: Path({root!r})\n"
)
REGISTERED = (
    "from vllm import ModelRegistry\n"
    "from vllm_prune.integration import plugin\n"
    "plugin.register()\n"
    "print(ModelRegistry._try_load_model_cls('Qwen2VLForConditionalGeneration').__name__)\n"
)
QWEN2_VL = "vllm/model_executor/models/qwen2_vl.py"
INPUTS = "vllm/multimodal/inputs.py"
CLI_ARGS = "vllm/entrypoints/common/cli_args.py"
# A pruning reliance broken: the name MultiModalFieldConfig no longer defined.
NO_FIELD_CONFIG = {INPUTS: ("class MultiModalFieldConfig", "class MultiModalFieldConfiguration")}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _broken_copy(root: Path, into: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """``root``'s tree as links, with each edited file a real copy: (old text, new text)."""
    shutil.copytree(root, into, copy_function=lambda src, dst: Path(dst).symlink_to(src))
    for file, (old, new) in edits.items():
        text = (root / file).read_text()
        assert old in text, (file, old)
        (into / file).unlink()
        (into / file).write_text(text.replace(old, new, 1))
    return into


def test_a_newer_vllm_whose_reliances_hold_prunes_with_one_warning(release_sources):
    done = _run(AS_NEWER.format(root=str(release_sources[NEWEST])) + REGISTERED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PruneQwen2VLForConditionalGeneration"]
    assert done.stderr.count("vLLM 0.35.0 is newer than the releases") == 1
    assert "pruning is on" in done.stderr and "breaks" not in done.stderr


def test_a_newer_vllm_with_a_broken_reliance_is_served_unpruned_and_names_it(
    release_sources, tmp_path
):
    """A renamed parameter of an overridden method and a removed name: both named."""
    root = _broken_copy(
        release_sources[NEWEST],
        tmp_path / "vllm-0.35.0",
        {
            QWEN2_VL: (
                "def get_mrope_input_positions(\n        self,\n        input_tokens:",
                "def get_mrope_input_positions(\n        self,\n        token_ids:",
            ),
            **NO_FIELD_CONFIG,
        },
    )
    done = _run(AS_NEWER.format(root=str(root)) + REGISTERED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Qwen2VLForConditionalGeneration"]  # vLLM's own class
    assert "is newer than the checked releases (0.32.0, 0.33.0, 0.34.0)" in done.stderr
    assert "every model is served unpruned" in done.stderr
    assert re.search(
        r"override vllm\.model_executor\.models\.qwen2_vl:Qwen2VLForConditionalGeneration\."
        r"get_mrope_input_positions: parameters changed from \(pos self, pos input_tokens, "
        r"[^)]*\) to \(pos self, pos token_ids, ",
        done.stderr,
    ), done.stderr
    assert (
        "import vllm.multimodal.inputs:MultiModalFieldConfig: MultiModalFieldConfig is no "
        "longer defined in vllm.multimodal.inputs" in done.stderr
    )
    assert "pruning is on" not in done.stderr


def test_an_older_vllm_is_refused_by_the_plugin():
    done = _run("import vllm; vllm.__version__ = '0.31.2'\n" + REGISTERED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Qwen2VLForConditionalGeneration"]  # vLLM's own class
    assert done.stderr.count(f"vllm-prune supports vLLM {compat.SUPPORTED}") == 1
    assert "this is vLLM 0.31.2" in done.stderr and "served unpruned" in done.stderr


def test_a_checked_release_registers_the_pruning_classes_without_a_check():
    done = _run(
        REGISTERED
        + "from vllm_prune.integration import compat\n"
        "assert compat.gate().checked and compat.gate().findings == ()\n"
        "import sys; assert 'vllm_prune.integration.ledger_check' not in sys.modules\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PruneQwen2VLForConditionalGeneration"]
    assert "newer than" not in done.stderr


SERVE_HELP = "from vllm_prune.cli import main\nmain(['serve', '--help'])\n"


def test_serve_prints_the_gate_of_a_newer_vllm_at_start(release_sources):
    done = _run(AS_NEWER.format(root=str(release_sources[NEWEST])) + SERVE_HELP)
    assert done.returncode == 0, done.stderr
    assert "vllm-prune serve: vLLM 0.35.0 is newer than the releases" in done.stderr
    assert "--prune-default" in done.stdout  # then it goes on: the help of its options


def test_serve_names_what_pruning_lost_and_serves_unpruned(release_sources, tmp_path):
    root = _broken_copy(
        release_sources[NEWEST],
        tmp_path / "vllm-0.35.0",
        NO_FIELD_CONFIG,
    )
    done = _run(AS_NEWER.format(root=str(root)) + SERVE_HELP)
    assert done.returncode == 0, done.stderr
    assert "vllm-prune serve: pruning is off: vLLM 0.35.0" in done.stderr
    assert "MultiModalFieldConfig is no longer defined" in done.stderr
    assert "a request that names a prune method gets a 400" in done.stderr
    assert "--prune-default" in done.stdout


def test_serve_exits_where_the_server_itself_is_broken(release_sources, tmp_path):
    root = _broken_copy(
        release_sources[NEWEST],
        tmp_path / "vllm-0.35.0",
        {CLI_ARGS: ("def make_arg_parser(", "def build_arg_parser(")},
    )
    done = _run(AS_NEWER.format(root=str(root)) + SERVE_HELP)
    assert done.returncode == 1
    assert "breaks what the server relies on" in done.stderr
    assert "make_arg_parser is no longer defined in vllm.entrypoints.common.cli_args" in (
        done.stderr
    )
    assert f"pip install 'vllm=={NEWEST}'" in done.stderr


def test_serve_exits_with_the_supported_versions_on_an_older_vllm():
    done = _run("import vllm; vllm.__version__ = '0.31.2'\n" + SERVE_HELP)
    assert done.returncode == 1
    assert f"vllm-prune supports vLLM {compat.SUPPORTED}" in done.stderr
    assert "this is vLLM 0.31.2" in done.stderr and "pip install" in done.stderr
