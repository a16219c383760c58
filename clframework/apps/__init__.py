"""The applications on top of the engine: the `clframework` command, bench, reproduce and tune."""
