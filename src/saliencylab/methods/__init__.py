"""Post-hoc attribution methods behind one contract (see ``base.Method``).

Every module of this package is imported here, so the methods it registers are available by name.
"""
import importlib
import pkgutil

from saliencylab.methods.base import OUTPUT_RANGES, Method, Passes, build, get, hyperparameters, names, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OUTPUT_RANGES", "Method", "Passes", "build", "get", "hyperparameters", "names", "register"]
