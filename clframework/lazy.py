"""Package attributes resolved on first use (PEP 562): a package lists its public names with the module each lives
in, and importing the package costs nothing until a name is used (`clframework list`, `report` without torch)."""
import importlib


def lazy_exports(namespace: dict, table: dict, prefix: str = ""):
    """The `__getattr__` and `__dir__` of the package whose globals() are `namespace`: name -> the module
    `prefix + table[name]`, imported on first use and the value cached in `namespace`."""
    package = namespace["__name__"]

    def __getattr__(name):
        if name in table:
            value = getattr(importlib.import_module(prefix + table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted([*namespace, *table])

    return __getattr__, __dir__
