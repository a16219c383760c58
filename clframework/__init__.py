"""clframework: paper-faithful continual learning (Synaptic Intelligence, exact-Fisher EWC) for head-to-head comparisons.

Layers, bottom to top (each imports only from those below it):
  registry, recipe, benchmarks.stream, plugin (strategy interface), callbacks (observer interface)  ->  models,
  evaluation, trainer, strategies, benchmarks  ->  config (RunConfig resolved and checked)  ->  runner (one run and its
  folder)  ->  study (compare: many runs, aggregated)  ->  apps (cli, bench, reproduce, tune, runs).
The public names below are resolved on first use (PEP 562), so `import clframework` and `clframework --help` do not
pay for importing torch.
"""
__version__ = "0.2.0"

_PUBLIC = {
    "RegistryError": "clframework.registry", "import_plugin": "clframework.registry",
    "Strategy": "clframework.plugin", "available_strategies": "clframework.plugin",
    "make_strategy": "clframework.plugin", "register_strategy": "clframework.plugin",
    "Batch": "clframework.plugin", "join": "clframework.plugin", "forward_heads": "clframework.models",
    "build_model": "clframework.models", "cifar_cnn": "clframework.models", "mlp": "clframework.models",
    "register_model": "clframework.models", "available_models": "clframework.models",
    "resnet18": "clframework.models", "reduced_resnet18": "clframework.models",
    "load": "clframework.inference", "TrainedModel": "clframework.inference",
    "Trainer": "clframework.trainer", "TrainerCallback": "clframework.callbacks",
    "select_device": "clframework.trainer",
    "TrainingDiverged": "clframework.trainer", "TrainingFailed": "clframework.trainer",
    "Stream": "clframework.benchmarks", "Task": "clframework.benchmarks",
    "available_benchmarks": "clframework.benchmarks", "make_benchmark": "clframework.benchmarks",
    "register_benchmark": "clframework.benchmarks",
    "RunConfig": "clframework.config", "RunResult": "clframework.runner", "run": "clframework.runner",
    "compare": "clframework.study",
    "Backend": "clframework.parallel",
}


from .lazy import lazy_exports  # noqa: E402 (after the table it serves)

__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)


__all__ = sorted(_PUBLIC)
