"""Check what vllm-prune relies on in vLLM against the code and against a release's sources.

``integration.compat.LEDGER`` lists every vLLM import, overridden method and
attribute read. This checks, without installing anything:
- the ledger against the code: every ``vllm`` import in ``vllm_prune`` is
  listed, and so is every vLLM method our classes override (found by walking
  their MRO in the installed vLLM), and nothing listed is gone from the code;
- the ledger against a vLLM release's own Python files (the wheel from
  ``pip download --no-deps``, cached under ``~/.cache/vllm-prune``): every
  imported name is still defined, every overridden method still exists with
  the same parameters as in the installed vLLM, every attribute read is still
  set by its class (or a base class).

    python -m devtools.vllm_check 0.33.0     # prints the findings; exit 1 if any
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import vllm_prune
from vllm_prune.integration import compat

PACKAGE = Path(vllm_prune.__file__).parent
# The modules whose classes subclass vLLM's (imported to walk their MRO).
# The modules whose classes subclass vLLM's (their overrides must be in the ledger).
SUBCLASSING_MODULES = (
    "vllm_prune.integration.llava",
    "vllm_prune.integration.llava_next",
    "vllm_prune.integration.qwen2_vl",
    "vllm_prune.integration.qwen3_vl",
    "vllm_prune.integration.qwen3_5",
    "vllm_prune.integration.media",
)


class SourcesUnavailable(RuntimeError):
    """A release's sources could not be downloaded (no registry, no such version)."""


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vllm-prune" / "vllm-sources"


def release_sources(version: str, timeout: float = 900) -> Path:
    """The Python files of vLLM ``version``'s wheel, downloaded once and cached."""
    target = cache_root() / f"vllm-{version}"
    if (target / "vllm" / "__init__.py").is_file():
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
        partial = Path(tempfile.mkdtemp(dir=target.parent.mkdir(parents=True, exist_ok=True)))
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(partial, [n for n in wheel.namelist() if n.endswith(".py")])
        if target.exists():
            shutil.rmtree(partial)
        else:
            partial.rename(target)
    return target


def installed_sources() -> Path:
    import vllm

    return Path(vllm.__file__).parent.parent


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


class Sources:
    """Look names up in a tree of vLLM's Python files, by parsing, never importing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trees: dict[str, ast.Module | None] = {}

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            base = self.root.joinpath(*module.split("."))
            file = next(
                (f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None
            )
            self._trees[module] = None if file is None else ast.parse(file.read_text())
        return self._trees[module]

    @staticmethod
    def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
        pending = list(tree.body)
        while pending:
            node = pending.pop(0)
            if isinstance(node, ast.If | ast.Try):
                pending += node.body + node.orelse
                pending += [s for h in getattr(node, "handlers", []) for s in h.body]
            else:
                yield node

    def _binding(self, module: str, name: str) -> ast.AST | tuple[str, str] | None:
        """What ``name`` is at the top of ``module``: a definition, or (module, name) it is
        imported from."""
        tree = self.tree(module)
        if tree is None:
            return None
        lazy, starred = False, []
        for node in self._top_level(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name == name:
                    return node
                lazy |= node.name == "__getattr__"
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                if name in names:
                    return node
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        starred.append(self._absolute(module, node))
                    elif (alias.asname or alias.name) == name:
                        return (self._absolute(module, node), alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name.split(".")[0]) == name:
                        return node
        for source in starred:  # `from .x import *`
            if self._binding(source, name) is not None:
                return (source, name)
        if lazy and any(isinstance(n, ast.Constant) and n.value == name for n in ast.walk(tree)):
            return ast.Constant(name)  # served by the module's __getattr__
        return None

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        tree_is_package = (self.root.joinpath(*module.split(".")) / "__init__.py").is_file()
        parts = module.split(".")
        parts = parts if tree_is_package else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def resolve(self, module: str, name: str, depth: int = 0) -> ast.AST | None:
        """The definition of ``module:name``, following re-exports."""
        found = self._binding(module, name)
        if isinstance(found, tuple) and depth < 8:
            source, original = found
            if self.tree(source) is None and self.tree(f"{source}.{original}") is not None:
                return ast.Module(body=[], type_ignores=[])  # a submodule
            return self.resolve(source, original, depth + 1)
        if found is None and self.tree(f"{module}.{name}") is not None:
            return ast.Module(body=[], type_ignores=[])  # a submodule
        return found if not isinstance(found, tuple) else None

    def _class(self, module: str, name: str) -> tuple[str, ast.ClassDef] | None:
        found = self._binding(module, name)
        for _ in range(8):
            if isinstance(found, ast.ClassDef):
                return module, found
            if not isinstance(found, tuple):
                return None
            module, name = found
            found = self._binding(module, name)
        return None

    def _bases(self, module: str, cls: ast.ClassDef) -> Iterator[tuple[str, ast.ClassDef]]:
        for base in cls.bases:
            node = base.value if isinstance(base, ast.Subscript) else base
            if isinstance(node, ast.Name):
                found = self._class(module, node.id)
                if found is not None:
                    yield found

    def member(self, module: str, qualname: str, depth: int = 0) -> ast.AST | None:
        """``Class.name`` as a method, a class attribute, or ``self.name = ...`` in a method,
        in the class or its bases."""
        class_name, _, name = qualname.partition(".")
        found = self._class(module, class_name)
        if found is None:
            return None
        module, cls = found
        for node in cls.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                return node
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    return node
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and node.attr == name:
                if isinstance(node.ctx, ast.Store) and getattr(node.value, "id", None) == "self":
                    return node
        if depth < 8:
            for base_module, base in self._bases(module, cls):
                hit = self.member(base_module, f"{base.name}.{name}", depth + 1)
                if hit is not None:
                    return hit
        return None


def parameters(node: ast.AST) -> list[str]:
    """A method's parameters as (kind, name, default) text, annotations left out."""
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out = [
        f"{'posonly' if i < len(args.posonlyargs) else 'pos'} {a.arg}"
        + (f"={ast.unparse(d)}" if d is not None else "")
        for i, (a, d) in enumerate(zip(positional, defaults, strict=True))
    ]
    if args.vararg:
        out.append(f"*{args.vararg.arg}")
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(f"kw {a.arg}" + (f"={ast.unparse(d)}" if d is not None else ""))
    if args.kwarg:
        out.append(f"**{args.kwarg.arg}")
    return out


def _split(target: str) -> tuple[str, str]:
    module, _, name = target.partition(":")
    return module, name


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
    return problems


def check_sources(root: Path, version: str, reference: Path | None = None) -> list[str]:
    """Where vLLM ``version``'s sources at ``root`` break the ledger.

    ``reference``: the installed vLLM's sources, whose override signatures must match.
    """
    release = ".".join(version.split(".")[:2])
    sources, problems = Sources(root), []
    theirs = Sources(reference) if reference is not None else None
    for item in compat.LEDGER:
        if item.kind == "behaviour" or release not in item.versions:
            continue
        module, name = _split(item.target)
        if item.kind == "import":
            if sources.tree(module) is None:
                problems.append(f"{item.target}: module {module} is gone")
            elif sources.resolve(module, name) is None:
                problems.append(f"{item.target}: {name} is no longer defined in {module}")
            continue
        node = sources.member(module, name)
        if node is None:
            problems.append(f"{item.kind} {item.target}: not found in vLLM {version}")
        elif item.kind == "override" and theirs is not None:
            base = theirs.member(module, name)
            if base is not None and parameters(base) != parameters(node):
                problems.append(
                    f"override {item.target}: parameters changed from "
                    f"({', '.join(parameters(base))}) to ({', '.join(parameters(node))})"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    versions = argv or [v for v in compat.CHECKED if v != compat.installed_version()]
    problems = [f"code: {p}" for p in check_code()]
    installed = compat.installed_version()
    problems += [f"{installed}: {p}" for p in check_sources(installed_sources(), installed)]
    for version in versions:
        root = release_sources(version)
        found = check_sources(root, version, reference=installed_sources())
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
