"""Per-method settings of the registry-generated contract tests (tests/test_methods.py).

FAST: hyper-parameters that make a slow method cheap enough for the contract suite (the
contract is about invariances, not quality). ATOL: absolute tolerance of the invariance
comparisons where iterative methods accumulate float differences between batch layouts.
Each family keeps its entries under its own comment.
"""

FAST: dict[str, dict] = {
    # gradient family
    "integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3},
    # CAM family
    # perturbation family
    # second order and baselines
}

ATOL: dict[str, float] = {
    # gradient family
    # CAM family
    # perturbation family
    # second order and baselines
}
