"""Name -> factory registries for strategies and benchmarks (in the style of timm / torchvision.models).

Hyperparameters are declared once, as the factory's keyword arguments with annotated types and defaults, so that
`create` can check a user's values before any training starts and `list` can show what each entry accepts.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import math
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here


class RegistryError(ValueError):
    """A name or hyperparameter that the registry cannot accept; the message says what is accepted."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default, type, and an optional validity check with a human description."""

    name: str
    default: Any
    type: type
    check: Optional[Callable[[Any], bool]] = None
    accepts: str = ""

    def coerce(self, owner: str, value: Any, word: str = "hyperparameter") -> Any:
        """Convert a value (also a CLI string) to the declared type, or raise naming the parameter."""
        expected = self.accepts or self.type.__name__
        if self.type is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    value = True
                elif low in ("0", "false", "no", "off"):
                    value = False
            if not isinstance(value, bool):
                raise RegistryError(f"{owner}: {word} '{self.name}' must be a boolean (true/false), got {value!r}")
        elif self.type in (int, float):
            if isinstance(value, bool):
                raise RegistryError(f"{owner}: {word} '{self.name}' must be a number ({expected}), got {value!r}")
            try:
                converted = self.type(value)
            except (TypeError, ValueError):
                raise RegistryError(
                    f"{owner}: {word} '{self.name}' must be a number ({expected}), got {value!r}"
                ) from None
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise RegistryError(f"{owner}: {word} '{self.name}' must be an integer, got {value!r}")
            if not math.isfinite(converted):  # inf passes every range check and reaches JSON as null
                raise RegistryError(f"{owner}: {word} '{self.name}' must be a finite number, got {value!r}")
            if abs(converted) > FLOAT32_MAX:  # finite here, inf in the float32 tensors it multiplies (SI's c=1e39)
                raise RegistryError(f"{owner}: {word} '{self.name}' = {converted:g} is beyond float32's range (largest "
                                    f"{FLOAT32_MAX:.4g}): training in float32 would overflow to inf")
            value = converted
        elif self.type is str:
            value = str(value)
        if self.check is not None and not self.check(value):
            raise RegistryError(f"{owner}: {word} '{self.name}' = {value!r} is invalid; accepted: {expected}")
        return value


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    params: Dict[str, Param] = field(default_factory=dict)
    description: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def defaults(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self.params.values()}


def params_from_signature(fn: Callable[..., Any], checks: Optional[Dict[str, tuple]] = None) -> Dict[str, Param]:
    """Read keyword hyperparameters (name, default, type) off a factory's signature.

    `checks` maps a name to `(predicate, description)` for values outside the type's natural range.
    """
    checks = checks or {}
    out: Dict[str, Param] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is inspect.Parameter.empty:
            continue
        typ = type(p.default) if p.default is not None else str
        if typ is int and p.annotation in (float, "float"):
            typ = float
        check, accepts = checks.get(name, (None, ""))
        out[name] = Param(name, p.default, typ, check, accepts)
    return out


class Registry:
    """A named collection of factories, filled by decorator and by entry points."""

    def __init__(self, kind: str, entry_point_group: Optional[str] = None, param_word: str = "hyperparameter",
                 builtins: Optional[str] = None):
        self.kind = kind
        self.param_word = param_word
        self.group = entry_point_group
        self.builtins = builtins  # module whose import registers the built-in entries, loaded on first lookup
        self._entries: Dict[str, Entry] = {}
        self._builtins_loaded = False
        self._entry_points_loaded = False
        self._loading_dist = ""  # the distribution whose entry point is being imported

    def register(self, name: str, *, checks: Optional[Dict[str, tuple]] = None, description: str = "",
                 override: bool = False, **extra):
        """Decorator: register a class or function under `name`; its keyword defaults are the hyperparameters.

        A name already registered is an error (a plugin must not silently replace, say, the built-in SI) unless
        override=True, which replaces it with a warning naming both origins."""

        def deco(factory):
            self._load_builtins()
            origin = self._origin(factory)
            old = self._entries.get(name)
            if old is not None and old.factory is not factory:
                where = old.extra.get("origin", "?")
                if not override:
                    raise RegistryError(f"{self.kind} '{name}' is already registered ({where}); {origin} cannot "
                                        f"register it again. Choose another name, or pass override=True to "
                                        f"replace it on purpose")
                warnings.warn(f"{self.kind} '{name}' ({where}) is replaced by {origin} (override=True)",
                              RuntimeWarning, stacklevel=3)
            target = factory.__init__ if inspect.isclass(factory) else factory
            desc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[name] = Entry(name, factory, params_from_signature(target, checks), desc,
                                        {**extra, "origin": origin})
            if inspect.isclass(factory):
                factory.registered_name = name
            return factory

        return deco

    def _origin(self, factory) -> str:
        """Where an entry comes from: built-in, an installed distribution's entry point, or a module."""
        if self._loading_dist:
            return f"distribution {self._loading_dist}"
        module = getattr(factory, "__module__", "") or "?"
        if module.startswith("clframework."):
            return "built-in"
        path = getattr(sys.modules.get(module), "__file__", None)
        return f"module {module}" + (f" ({path})" if path else "")

    def _load_builtins(self) -> None:
        """Import the built-in entries on first use, so no import order is needed to see them."""
        if not self._builtins_loaded:
            self._builtins_loaded = True
            if self.builtins:
                importlib.import_module(self.builtins)

    def _load_entry_points(self) -> None:
        """Built-ins first, then installed plugins: lookups see both however the caller imported clframework."""
        self._load_builtins()
        if self._entry_points_loaded or self.group is None:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
            self._loading_dist = dist
            try:
                ep.load()  # importing the module runs its @register decorators
            except Exception as exc:  # one broken plugin must not take every command down
                warnings.warn(f"clframework: installed plugin '{ep.name}' from distribution {dist} ({ep.value}) "
                              f"failed to load and is skipped: {type(exc).__name__}: {exc}", RuntimeWarning,
                              stacklevel=2)
            finally:
                self._loading_dist = ""

    def names(self) -> List[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        self._load_entry_points()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'; {hint}registered: {', '.join(self.names()) or '(none)'}"
            )
        return self._entries[name]

    def check_hparams(self, name: str, hparams: Dict[str, Any]) -> Dict[str, Any]:
        """Return the full, type-converted hyperparameters, or raise naming the first bad one."""
        entry = self.get(name)
        unknown = sorted(set(hparams) - set(entry.params))
        if unknown:
            accepted = ", ".join(f"{p.name} (default {p.default!r})" for p in entry.params.values()) or "none"
            raise RegistryError(f"{self.kind} '{name}' has no {self.param_word} {', '.join(map(repr, unknown))}; "
                                f"accepted: {accepted}")
        full = entry.defaults
        for key, value in hparams.items():
            full[key] = entry.params[key].coerce(f"{self.kind} '{name}'", value, self.param_word)
        for key, value in full.items():  # defaults must pass the same checks
            entry.params[key].coerce(f"{self.kind} '{name}'", value, self.param_word)
        return full

    def create(self, name: str, **hparams) -> Any:
        return self.get(name).factory(**self.check_hparams(name, hparams))


def import_plugin(module: str) -> None:
    """Import a user's module (dotted name or path to a .py file) so that its registrations count."""
    import sys
    from pathlib import Path

    path = Path(module)
    try:
        if module.endswith(".py"):
            if not path.is_file():
                raise RegistryError(f"plugin file '{module}' does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[path.stem]  # no half-imported module left behind
                raise
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            importlib.import_module(module)
    except SyntaxError as exc:
        raise RegistryError(f"plugin '{module}' has a syntax error: {exc.filename}, line {exc.lineno}: {exc.msg}; "
                            f"fix the file (python -m py_compile {exc.filename} shows it)") from None
    except ModuleNotFoundError as exc:
        plugin = path.stem if module.endswith(".py") else module
        if exc.name and exc.name.split(".")[0] != plugin.split(".")[0]:  # the plugin was found: what it imports is not
            raise RegistryError(f"plugin '{module}' needs the module '{exc.name}', which is not installed here; "
                                f"install the package that provides it (e.g. pip install {exc.name.split('.')[0]})"
                                ) from None
        raise RegistryError(
            f"cannot import plugin '{module}': {exc}. Pass an importable module name (on PYTHONPATH or in the "
            f"current directory) or a path to a .py file."
        ) from None
    except RegistryError:
        raise
    except Exception as exc:  # the plugin's own code raised: name the plugin and where (its message alone did not)
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise RegistryError(f"plugin '{module}' raised {type(exc).__name__} while being imported ({frame.filename}, "
                            f"line {frame.lineno}): {exc}; fix the plugin (--debug shows the traceback)") from exc


def declared_entries(package: str, decorator: str, base: str) -> Optional[List[dict]]:
    """Name, description and hyperparameter defaults of every class that `package`'s modules register with
    `@decorator("name", ...)`, read from their source without importing them (so that `clframework list` needs no
    torch). None when something cannot be read statically (a computed name or default, an inherited `__init__`
    from elsewhere, no docstring): the caller then imports the package instead."""
    import ast

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    classes, found = {}, []
    try:
        for path in sorted(Path(p) for loc in spec.submodule_search_locations for p in Path(loc).glob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = node
        for node in classes.values():
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == decorator:
                    found.append((ast.literal_eval(deco.args[0]), node, deco))
        out = []
        for name, node, deco in found:
            init, cls = None, node
            while init is None:
                init = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                parents = [b.id for b in cls.bases if isinstance(b, ast.Name)]
                if init is None and parents == [base]:
                    break
                if init is None:
                    cls = classes[parents[0]]  # KeyError: a base class from elsewhere
            params = {}
            if init is not None:
                args = init.args.args[1:] + init.args.kwonlyargs
                defaults = [None] * (len(init.args.args) - 1 - len(init.args.defaults)) + init.args.defaults \
                    + init.args.kw_defaults
                params = {a.arg: ast.literal_eval(d) for a, d in zip(args, defaults) if d is not None}
            description = next((ast.literal_eval(k.value) for k in deco.keywords if k.arg == "description"), "")
            doc = ast.get_docstring(node)
            if not description and not doc:
                return None
            out.append({"name": name, "description": description or doc.split("\n")[0], "params": params})
    except (OSError, SyntaxError, ValueError, KeyError, IndexError, TypeError):
        return None
    return out


def declared_registry(kind: str, package: str, decorator: str, base: str) -> Optional[Registry]:
    """A Registry of the names and hyperparameter names that `declared_entries` reads from source (no factories,
    no value checks): an unknown name or hyperparameter is refused with the registry's own message before the
    package (and torch) is imported. None when the source cannot be read statically."""
    declared = declared_entries(package, decorator, base)
    if declared is None:
        return None
    registry = Registry(kind)
    registry._builtins_loaded = True
    for e in declared:
        params = {name: Param(name, default, object) for name, default in e["params"].items()}
        registry._entries[e["name"]] = Entry(e["name"], None, params, e["description"], {"origin": "built-in"})
    return registry


def declared_functions(module: str, decorator: str) -> Optional[List[dict]]:
    """Name, description and option defaults (keyword arguments after the positional ones) of every function that
    `module`'s source registers with `@decorator("name", description=...)`, read without importing it (the model
    registry: `clframework list` needs no torch). None when something cannot be read statically."""
    import ast

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    out = []
    try:
        for node in ast.parse(Path(spec.origin).read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == decorator:
                    args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
                    defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                    description = next((ast.literal_eval(k.value) for k in deco.keywords if k.arg == "description"),
                                       "")
                    out.append({"name": ast.literal_eval(deco.args[0]), "description": description,
                                "params": {a.arg: ast.literal_eval(d) for a, d in zip(args, defaults)}})
    except (OSError, SyntaxError, ValueError, IndexError):
        return None
    return out
