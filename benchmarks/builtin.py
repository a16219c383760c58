"""Importing this module registers the built-in benchmarks (the registry does it on its first lookup)."""
from . import der, embedded, ondisk, online, paper  # noqa: F401
