"""Per-method settings of the registry-generated contract tests (tests/test_methods.py).

FAST: hyper-parameters that make a slow method cheap enough for the contract suite (the
contract is about invariances, not quality). ATOL: absolute tolerance of the invariance
comparisons where iterative methods accumulate float differences between batch layouts.
Each family keeps its entries under its own comment.
"""

def _tiny_explainer():
    import torch

    from saliencylab.models.explainer import light_explainer
    with torch.random.fork_rng():  # leave the global RNG as it was
        torch.manual_seed(0)
        return light_explainer(4, width=4)


def _tiny_masker():
    import torch

    from saliencylab.models.masker import Masker
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Masker(["features"], [32], channels=8)  # reads the suite's small CNN (width 4: 32 channels)


def _tiny_inmodel():
    import torch

    from saliencylab.models.inmodel import InModelNet
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return InModelNet(4, "vgg", explainer_widths=(2, 2, 2), vgg_widths=(2, 2, 2, 2), init_bias=0.5)


_TINY_EXPLAINER = _tiny_explainer()  # trained explainers (below)
_TINY_MASKER = _tiny_masker()

FAST: dict[str, dict] = {
    # gradient family
    "integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3},
    # CAM family
    # perturbation family
    "rise": {"num_masks": 64}, "extremal_perturbation": {"max_iter": 4, "areas": (0.1, 0.3)},
    "meaningful_perturbation": {"max_iter": 4, "mask_size": 8}, "igos_pp": {"iterations": 2, "steps": 3, "mask_size": 8},
    # second order and baselines
    # trained explainers: a tiny random light explainer (4 classes, like the suite's small CNN) stands in
    # for a checkpoint directory written by fit_explainer
    **{name: {"explainer": _TINY_EXPLAINER} for name in ("explainer", "rt_saliency", "fcnn")},
    # masker (paper 001): a tiny random masker stands in for a directory written by fit_masker
    "masker": {"masker": _TINY_MASKER},
    # in-model explainer (paper 004): a tiny random in-model network stands in for a folder written by fit_inmodel
    "inmodel": {"network": _tiny_inmodel()},
}

ATOL: dict[str, float] = {
    # gradient family
    # CAM family
    # perturbation family
    "extremal_perturbation": 1e-4, "meaningful_perturbation": 1e-4, "igos_pp": 1e-4,
    # second order and baselines
}
