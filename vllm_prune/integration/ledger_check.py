"""The ledger's checks, run against a tree of vLLM's Python files by parsing, never importing.

``compat.LEDGER`` lists every vLLM name, overridden method and attribute read
vllm-prune relies on. ``check_sources`` says where a tree of vLLM sources breaks
it: a name no longer defined, an overridden method whose parameters changed, an
attribute no class sets any more. The version gate runs it on the installed vLLM
when that is newer than the checked releases (it runs in every vLLM process, so
it only parses the files the ledger names); ``devtools.vllm_check`` runs it on
any release's wheel.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from importlib.util import find_spec
from pathlib import Path

from . import compat
from .ledger_parameters import PARAMETERS


def installed_sources() -> Path:
    """The folder holding the installed ``vllm`` package (found without importing it)."""
    spec = find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("vllm is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


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


def broken_reliances(
    root: Path,
    release: str,
    reliances: Iterable[compat.Reliance] = compat.LEDGER,
    expected: dict[str, tuple[str, ...]] = PARAMETERS,
) -> list[tuple[compat.Reliance, str]]:
    """Each ledger entry that holds on ``release`` (a minor release, "0.34") and that the
    vLLM sources at ``root`` break, with a line naming the name, method or parameter.

    ``expected``: the parameters of each overridden method in the checked releases.
    """
    sources = Sources(root)
    found = []
    for item in reliances:
        if item.kind != "behaviour" and release in item.versions:
            problem = _problem(sources, item, expected)
            if problem is not None:
                found.append((item, problem))
    return found


def check_sources(
    root: Path,
    release: str,
    reliances: Iterable[compat.Reliance] = compat.LEDGER,
    expected: dict[str, tuple[str, ...]] = PARAMETERS,
) -> list[str]:
    """``broken_reliances``' lines alone."""
    return [problem for _, problem in broken_reliances(root, release, reliances, expected)]


def _problem(
    sources: Sources, item: compat.Reliance, expected: dict[str, tuple[str, ...]]
) -> str | None:
    module, name = item.target.partition(":")[::2]
    if item.kind == "import":
        if sources.tree(module) is None:
            return f"import {item.target}: module {module} is gone"
        if sources.resolve(module, name) is None:
            return f"import {item.target}: {name} is no longer defined in {module}"
        return None
    node = sources.member(module, name)
    if node is None:
        return f"{item.kind} {item.target}: not found"
    if item.kind == "override" and item.target in expected:
        found, wanted = parameters(node), list(expected[item.target])
        if found != wanted:
            return (
                f"override {item.target}: parameters changed from "
                f"({', '.join(wanted)}) to ({', '.join(found)})"
            )
    return None
