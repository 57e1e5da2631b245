"""Which of lipcore's source files a module or notebook depends on, and a hash of them.

A trained net depends on more than its trainer: the model's constructor, the bound the trainer
calls (LipSDP inside ADMM), the augmentation, the progress bar's seeding side effects. The model
cache key and REPORT.md's "stale" mark both read the same set: the lipcore modules a starting
module imports, followed transitively through ``import`` statements (read with :mod:`ast`, never
executed), plus the ``__init__`` of every package on the way, which runs on import. Over-counting
is safe (a net is retrained that need not be); missing a file is not, so every ``from . import
x`` and ``from .x import y`` counts, whether or not ``y`` is used.

Both read a file's *code* (:func:`code_text`): its source without comments, docstrings and blank
lines, which cannot change what it computes. Correcting a docstring therefore neither retrains
a net nor marks a committed result stale. Keys made before this rule hashed the raw bytes
(:func:`fingerprint` with ``raw=True``); the cache still finds nets stored under that form.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import io
import json
import tokenize
from pathlib import Path

PACKAGE = "lipcore"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# libraries whose version can change a trained net's weights, and what each one loads by name
VERSIONED = {"torch": (), "numpy": (), "torchvision": (), "scipy": (), "cvxpy": ("scs", "clarabel")}
# the cache's own machinery: it decides the form of a key, never a net's weights or a result
KEY_MACHINERY = ("lipcore/cache.py", "lipcore/deps.py")


def module_file(name: str) -> Path | None:
    """The source file of lipcore module ``name`` (``lipcore.trainers.admm``), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def lazy_exports(package: str) -> dict[str, str]:
    """Name -> submodule of a lipcore package whose ``__init__`` attaches its names lazily
    (``lazy_loader.attach(__name__, submod_attrs={...})``); empty for any other module. Such an
    ``__init__`` imports nothing itself: a name runs its submodule only when it is imported."""
    path = module_file(package)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "attach":
            for keyword in node.keywords:
                if keyword.arg == "submod_attrs":
                    table = ast.literal_eval(keyword.value)
                    return {name: f"{package}.{sub}" for sub, names in table.items()
                            for name in names}
    return {}


def _targets(base: str, names: list[str]) -> list[str]:
    """Modules that ``from base import names`` runs: ``base``, each name that is a submodule,
    and the submodule of each name a lazy package attaches. Taking a lazy package itself as an
    object (``from lipcore import attacks``) may reach any of its names, so it counts them all."""
    lazy = lazy_exports(base)
    targets = [base] + [lazy[n] if n in lazy else f"{base}.{n}" for n in names
                        if n in lazy or module_file(f"{base}.{n}") is not None]
    for target in targets[1:]:
        targets += lazy_exports(target).values()
    return targets


def _imports(tree: ast.AST, package: str) -> tuple[set[str], set[str]]:
    """(lipcore modules, other top-level packages) that the code ``tree`` imports; relative
    imports resolve against ``package``."""
    ours, others = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            # ``import pkg``: the package object may reach any name a lazy package attaches
            targets = [t for alias in node.names
                       for t in (alias.name, *lazy_exports(alias.name).values())]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = _targets(base, [a.name for a in node.names])
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            if top == PACKAGE:
                ours.add(target)
            else:
                others.add(top)
    return {m for m in ours if module_file(m)}, others


def _imported(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(lipcore modules, other top-level packages) that ``path`` (module ``name``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports(ast.parse(path.read_text(), str(path)), package)


@functools.lru_cache(maxsize=None)
def closure(start: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(lipcore modules, other top-level packages) that importing ``start`` runs, sorted."""
    seen: set[str] = set()
    packages: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):             # a package's __init__ runs first
            prefix = ".".join(parts[:i])
            if prefix in seen or module_file(prefix) is None:
                continue
            seen.add(prefix)
            if str(module_file(prefix).relative_to(REPO_ROOT)) in KEY_MACHINERY:
                continue                               # its imports make keys, not nets
            ours, others = _imported(prefix, module_file(prefix))
            packages |= others
            todo.extend(ours - seen)
    return tuple(sorted(seen)), tuple(sorted(packages))


def source_files(start: str) -> list[str]:
    """Repository-relative paths of the lipcore files in ``start``'s import closure."""
    paths = (str(module_file(m).relative_to(REPO_ROOT)) for m in closure(start)[0])
    return [path for path in paths if path not in KEY_MACHINERY]


def installed_versions(libraries: list[str] | None = None) -> dict[str, str]:
    """Installed versions of ``libraries`` (default: every library of :data:`VERSIONED` and what
    each loads by name); ``"absent"`` for one that is not installed."""
    if libraries is None:
        libraries = [*VERSIONED, *(extra for extras in VERSIONED.values() for extra in extras)]
    versions = {}
    for lib in sorted(set(libraries)):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "absent"
    return versions


def library_versions(start: str) -> dict[str, str]:
    """Versions of the libraries in :data:`VERSIONED` that ``start``'s closure imports."""
    wanted = [lib for lib in VERSIONED if lib in closure(start)[1]]
    return installed_versions(wanted + [extra for lib in wanted for extra in VERSIONED[lib]])


def code_text(source: str) -> str:
    """``source`` without comments, docstrings (the leading string of a module, class or
    function), trailing spaces and blank lines: what the hashes read. A docstring that shares a
    line with code is kept (over-counting is safe)."""
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    lines = source.split("\n")          # the rows tokenize and ast count (not splitlines)
    inside_string: set[int] = set()      # rows whose line break is part of a string's value
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
        elif token.type != tokenize.NL and token.start[0] != token.end[0]:
            inside_string.update(range(token.start[0] - 1, token.end[0] - 1))
    dropped: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)) or not body:
            continue
        first = body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        start, end = first.lineno - 1, first.end_lineno - 1
        alone = (not lines[start].encode()[:first.col_offset].strip()
                 and not lines[end].encode()[first.end_col_offset:].strip())
        if alone:
            dropped.update(range(start, end + 1))
    kept = [line if i in inside_string else line.rstrip() for i, line in enumerate(lines)
            if i not in dropped and (i in inside_string or line.strip())]
    return "\n".join(kept) + "\n"


@functools.lru_cache(maxsize=None)
def fingerprint(start: str, raw: bool = False) -> str:
    """Hash of the code (:func:`code_text`) of every lipcore file ``start`` depends on and of
    the library versions that matter: the part of a model cache key that says which code
    trained it. ``raw``: hash the files' bytes instead (the form keys had before comments and
    docstrings stopped counting)."""
    def digest(path: str) -> str:
        text = (REPO_ROOT / path).read_bytes()
        return hashlib.sha256(text if raw else code_text(text.decode()).encode()).hexdigest()
    payload = {path: digest(path) for path in source_files(start)}
    payload["libraries"] = library_versions(start)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def notebook_modules(notebook: Path) -> list[str]:
    """The lipcore modules a notebook's code cells import."""
    import nbformat
    names: set[str] = set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:                        # IPython magics: their lines are not Python
            tree = ast.parse("\n".join(line for line in cell.source.splitlines()
                                       if not line.lstrip().startswith(("%", "!"))))
        names |= _imports(tree, PACKAGE)[0]
    return sorted(names)


def notebook_sources(notebook: Path) -> list[str]:
    """Every lipcore file a notebook's results depend on (the closure of its imports)."""
    return sorted({path for module in notebook_modules(notebook) for path in source_files(module)})
