"""Post-hoc attribution methods behind one contract (see ``base.Method``)."""
from saliencylab.methods import cam, gradient  # noqa: F401  (registers the methods)
from saliencylab.methods.base import Method, build, get, hyperparameters, names, register

__all__ = ["Method", "build", "get", "hyperparameters", "names", "register"]
