"""Check what vllm-prune relies on in vLLM against the code and against a release's sources.

``integration.compat.LEDGER`` lists every vLLM import, overridden method and
attribute read. This checks, without installing anything:
- the ledger against the code: every ``vllm`` import in ``vllm_prune`` is
  listed, and so is every vLLM method our classes override (found by walking
  their MRO in the installed vLLM), nothing listed is gone from the code, and
  ``integration.ledger_parameters`` holds each override's parameters as the
  installed vLLM has them;
- the ledger against a vLLM release's own Python files (the wheel from
  ``pip download --no-deps``, cached under ``~/.cache/vllm-prune``), with
  ``integration.ledger_check`` (the checks the version gate runs at load on an
  unchecked release): every imported name is still defined, every overridden
  method keeps its parameters, every attribute read is still set by its class
  (or a base class).

    python -m devtools.vllm_check 0.35.0     # prints the findings; exit 1 if any
    python -m devtools.vllm_check --write-parameters   # after adding an override
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import vllm_prune
from vllm_prune.integration import compat, ledger_check
from vllm_prune.integration.ledger_check import installed_sources
from vllm_prune.integration.ledger_parameters import PARAMETERS

PACKAGE = Path(vllm_prune.__file__).parent
# The modules whose classes subclass vLLM's (their overrides must be in the ledger).
SUBCLASSING_MODULES = (
    "vllm_prune.integration.llava",
    "vllm_prune.integration.qwen2_vl",
    "vllm_prune.integration.qwen3_vl",
    "vllm_prune.integration.qwen3_5",
    "vllm_prune.integration.media",
    "vllm_prune.integration.load",
    "vllm_prune.integration.model_state",
)


class SourcesUnavailable(RuntimeError):
    """A release's sources could not be downloaded (no registry, no such version)."""


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vllm-prune" / "vllm-sources"


def release_sources(version: str, timeout: float = 900) -> Path:
    """The Python files of vLLM ``version``'s wheel and its ``dist-info`` folder (so that
    ``importlib.metadata.version("vllm")`` answers with the folder first on ``sys.path``),
    downloaded once and cached."""
    target = cache_root() / f"vllm-{version}"

    def cached() -> bool:
        return (target / "vllm" / "__init__.py").is_file() and any(
            target.glob("vllm-*.dist-info/METADATA")
        )

    if cached():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--dest", tmp, f"vllm=={version}",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SourcesUnavailable(f"pip download vllm=={version} timed out") from None
        wheels = list(Path(tmp).glob("vllm-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise SourcesUnavailable(
                f"cannot download vllm=={version} with `{' '.join(command[2:])}`: "
                + " / ".join(tail)
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=target.parent))  # beside it: renamed in place
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = [
                n
                for n in wheel.namelist()
                if n.endswith(".py") or n.split("/", 1)[0].endswith(".dist-info")
            ]
            wheel.extractall(partial, names)
        if cached():
            shutil.rmtree(partial)  # another process got there first
        else:
            # An older cache without the dist-info: swapped for the new one.
            stale = Path(tempfile.mkdtemp(dir=target.parent)) / "stale"
            if target.exists():
                target.rename(stale)
            partial.rename(target)
            shutil.rmtree(stale.parent)
    return target


# -- the code ----------------------------------------------------------------------------


def code_imports() -> dict[str, list[str]]:
    """``module:name`` of every vLLM import in the package -> the files that make it."""
    found: dict[str, list[str]] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "vllm" or node.module.startswith("vllm."):
                    targets = [f"{node.module}:{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [
                    f"{a.name}:"
                    for a in node.names
                    if a.name == "vllm" or a.name.startswith("vllm.")
                ]
            for target in targets:
                found.setdefault(target, []).append(str(file.relative_to(PACKAGE.parent)))
    return found


def _is_ours(cls: type) -> bool:
    return cls.__module__.startswith("vllm_prune.")


def _is_vllms(cls: type) -> bool:
    return cls.__module__ == "vllm" or cls.__module__.startswith("vllm.")


def code_overrides() -> dict[str, list[str]]:
    """``module:Class.method`` of every vLLM method our classes override -> our classes."""
    found: dict[str, list[str]] = {}
    for name in SUBCLASSING_MODULES:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and _is_ours(cls) and any(map(_is_vllms, cls.__mro__))):
                continue
            ours = {
                attr
                for base in cls.__mro__
                if _is_ours(base)
                for attr, value in vars(base).items()
                if inspect.isfunction(value)
                and (attr == "__init__" or not attr.startswith("__"))  # Protocol's hooks
            }
            for attr in sorted(ours):
                definer = next((b for b in cls.__mro__ if _is_vllms(b) and attr in vars(b)), None)
                if definer is not None:
                    target = f"{definer.__module__}:{definer.__qualname__}.{attr}"
                    found.setdefault(target, []).append(cls.__qualname__)
    return found


# -- a release's sources ---------------------------------------------------------------------


def installed_parameters() -> dict[str, tuple[str, ...]]:
    """Each ledger override's parameters in the installed vLLM."""
    sources = ledger_check.Sources(installed_sources())
    installed = compat.release(compat.installed_version())
    found = {}
    for item in compat.LEDGER:
        if item.kind == "override" and installed in item.versions:
            node = sources.member(*item.target.split(":"))
            if node is not None:
                found[item.target] = tuple(ledger_check.parameters(node))
    return found


def check_code() -> list[str]:
    """Where the ledger and the code disagree."""
    problems = []
    listed = {r.target for r in compat.LEDGER if r.kind == "import"}
    imports = code_imports()
    for target, files in sorted(imports.items()):
        if target not in listed:
            problems.append(f"import {target} ({', '.join(files)}) is not in the ledger")
    for target in sorted(listed - set(imports)):
        problems.append(f"the ledger lists import {target}, which the code no longer makes")
    listed = {r.target for r in compat.LEDGER if r.kind == "override"}
    overrides = code_overrides()
    for target, classes in sorted(overrides.items()):
        if target not in listed:
            problems.append(f"override {target} ({', '.join(classes)}) is not in the ledger")
    for target in sorted(listed - set(overrides)):
        problems.append(f"the ledger lists override {target}, which no class of ours makes")
    if installed_parameters() != PARAMETERS:
        problems.append(
            "integration/ledger_parameters.py does not hold the installed vLLM's parameters of "
            "every override: run python -m devtools.vllm_check --write-parameters"
        )
    return problems


def write_parameters() -> Path:
    """(Re)write ``integration/ledger_parameters.py`` from the installed vLLM."""
    lines = [
        '"""The parameters of every vLLM method vllm-prune overrides, as the checked releases',
        "have them: the load-time check compares an unchecked release's against these.",
        "",
        "Written by ``python -m devtools.vllm_check --write-parameters`` from the installed",
        'vLLM; ``devtools.vllm_check`` checks them against it and each checked release."""',
        "",
        "PARAMETERS: dict[str, tuple[str, ...]] = {",
    ]
    for target, params in sorted(installed_parameters().items()):
        lines.append(f"    {json.dumps(target)}: (")
        lines += [f"        {json.dumps(p)}," for p in params]
        lines.append("    ),")
    lines.append("}")
    path = PACKAGE / "integration" / "ledger_parameters.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write-parameters"]:
        print(f"wrote {write_parameters()}")
        return 0
    installed = compat.installed_version()
    versions = argv or [v for v in compat.CHECKED if v != installed]
    problems = [f"code: {p}" for p in check_code()]
    found = ledger_check.check_sources(installed_sources(), compat.release(installed))
    problems += [f"{installed}: {p}" for p in found]
    for version in versions:
        try:
            found = ledger_check.check_sources(
                release_sources(version), compat.ledger_release(version)
            )
        except SourcesUnavailable as error:
            found = [f"cannot check it: {error}"]
        problems += [f"{version}: {p}" for p in found]
    counts = {k: sum(r.kind == k for r in compat.LEDGER) for k in ("import", "override")}
    print(
        f"ledger: {len(compat.LEDGER)} entries ({counts['import']} imports, "
        f"{counts['override']} overrides); installed vLLM {installed}; checked "
        f"{', '.join([installed, *versions])}"
    )
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
