"""Conformance suite: each strategy against a reference step written from its authors' code (harness.py)."""
