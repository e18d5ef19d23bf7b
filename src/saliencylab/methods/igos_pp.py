"""iGOS++ (Khorram et al., 'iGOS++: Integrated Gradient Optimized Saliency by Bilateral
Perturbations', ACM CHIL 2021).

Each (image, target) pair optimises its own masks; all of a chunk's masks form one batched
tensor, and the losses are summed over independent pairs, so the per-pair line search gives the
same result batched as one at a time. The noise is drawn from ``seed`` on the CPU and shared by
all pairs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register
from saliencylab.methods.meaningful_perturbation import class_probability, tv_norm, upsample_corners
from saliencylab.models.classifier import Classifier
from saliencylab.perturb import blur


def bilateral_tv(normalized: Tensor, masks: Tensor, beta: float, sigma: float) -> Tensor:
    """iGOS++'s bilateral TV (N,): ½(TV_β(m) + mean w_y|Δ_y up(m)|^β + mean w_x|Δ_x up(m)|^β), m (N,1,h,w).

    Edge weights from the normalised image (N,3,H,W), as the official code (``bilateral_tv_norm``):
    w_y = exp(−mean_c(Δ_y I)²/σ), w_x = mean_c exp(−(Δ_x I)²/σ) (its two axes differ; kept).
    """
    up = upsample_corners(masks, normalized.shape[-2:])
    weight_y = (-(normalized[..., :-1, :] - normalized[..., 1:, :]).mean(1, keepdim=True) ** 2 / sigma).exp()
    weight_x = (-(normalized[..., :, :-1] - normalized[..., :, 1:]) ** 2 / sigma).exp().mean(1, keepdim=True)
    edges_y = (weight_y * (up[..., :-1, :] - up[..., 1:, :]).abs().pow(beta)).flatten(1).mean(1)
    edges_x = (weight_x * (up[..., :, :-1] - up[..., :, 1:]).abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (tv_norm(masks, beta) + edges_y + edges_x)


@register("igos_pp")
class IGOSPlusPlus(Method):
    """iGOS++ (Khorram et al., 2021): deletion and insertion masks optimised with integrated gradients; map 1 − up(m_del·m_ins).

    Defaults as NN-Explainer (Stalder et al. 2022) runs the official code: ``mask_size=28`` masks (28×28
    whatever the image size) initialised to 1, ``iterations=20`` optimisation steps, ``steps=15``
    integration points α ∈ {1/n, …, 1}; softmax probabilities p_c. Per pair the loss is
    Σ_α [p(x·αM_d + b(1−αM_d)) − p(b·αM_i + x(1−αM_i)) + p(x·αM + b(1−αM)) − p(b·αM + x(1−αM))]/n
    with M = M_d·M_i (deletion and insertion games on each mask and on their product), plus
    ``l1=1``·mean|1 − m| + ``l2=20``·bilateral TV (β=2, σ=0.01, :func:`bilateral_tv`) of
    m = m_d·m_i. The step follows the gradient of (path loss)/2 + regulariser (as the official
    code), with a per-pair backtracking line search on path loss + regulariser: α from
    ``alpha=1000``, Armijo β = 1e-4, decay 0.2, stopping below 1e-5; masks are clamped to [0,1].
    Work per iteration: one forward and backward of the 4·``steps`` path images per pair, then 1 to 12
    forward-only trials of them (the line search; its starting objective is the gradient pass's own),
    so ``passes`` declares the least, 2 forwards and 1 backward per path image and iteration.
    Baseline b: the image blurred by a Gaussian of σ = 50 px, kernel 51 px at 224 px, scaled with
    min(H,W)/224. Path noise N(0, 0.2) in the normalised space (0.2·std in [0,1] space) is added
    to every path image. Deviation: one (steps,3,H,W) noise draw per iteration from ``seed``,
    shared by all pairs and reused by that iteration's line search (the official code draws fresh
    noise per image and per evaluation, so its Armijo test compares differently-noised losses).
    Map in [0,1], 1 = salient, upsampled bilinearly with aligned corners (as the official code).
    """

    output_range = "unit"
    terms = 4  # deletion on m_d·m_i, insertion on m_d·m_i, deletion on m_d, insertion on m_i

    def __init__(self, classifier: Classifier, *, iterations: int = 20, steps: int = 15, mask_size: int = 28,
                 l1: float = 1.0, l2: float = 20.0, alpha: float = 1000.0, noise: float = 0.2, seed: int = 0,
                 max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if iterations < 1 or steps < 1 or mask_size < 2 or alpha <= 0:
            raise ValueError(f"need iterations >= 1, steps >= 1, mask_size >= 2, alpha > 0; got iterations="
                             f"{iterations}, steps={steps}, mask_size={mask_size}, alpha={alpha}")
        if l1 < 0 or l2 < 0 or noise < 0:
            raise ValueError(f"l1, l2 and noise must be >= 0, got l1={l1}, l2={l2}, noise={noise}")
        self.iterations, self.steps, self.mask_size, self.l1, self.l2 = iterations, steps, mask_size, l1, l2
        self.alpha, self.noise, self.seed = alpha, noise, seed

    def baselines(self, images: Tensor) -> Tensor:
        """The official blur baseline scaled to the image: σ = 50·s, kernel 2·round(25·s)+1, s = min(H,W)/224."""
        scale = min(images.shape[-2:]) / 224
        return blur(images, 50 * scale, radius=round(25 * scale))

    def path_loss(self, images: Tensor, baselines: Tensor, classes: Tensor, noise: Tensor, del_mask: Tensor,
                  ins_mask: Tensor, grad: bool) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The path loss (P,) of the four games, and (if ``grad``) its gradients w.r.t. both masks.

        The (pair, game, α) rows run ``max_batch`` at a time; the gradients are accumulated over chunks.
        """
        size = images.shape[-2:]
        alphas = torch.linspace(1 / self.steps, 1, self.steps, device=images.device)
        rows = torch.arange(len(images) * self.terms * self.steps, device=images.device)
        loss = torch.zeros(len(images), device=images.device)
        grads = (torch.zeros_like(del_mask), torch.zeros_like(ins_mask)) if grad else None
        for chunk in rows.split(self.max_batch):
            pair, game, step = chunk // (self.terms * self.steps), chunk // self.steps % self.terms, chunk % self.steps
            with torch.set_grad_enabled(grad):
                up_del, up_ins = upsample_corners(del_mask, size), upsample_corners(ins_mask, size)
                games = torch.stack([up_del * up_ins, up_del * up_ins, up_del, up_ins], dim=1)  # (P,4,1,H,W)
                mask = games[pair, game] * alphas[step].view(-1, 1, 1, 1)
                deletion = (game % 2 == 0).view(-1, 1, 1, 1)  # even games delete, odd games insert
                kept, other = torch.where(deletion, images[pair], baselines[pair]), torch.where(
                    deletion, baselines[pair], images[pair])
                path = kept * mask + other * (1 - mask) + noise[step]
                sign = torch.where(deletion.view(-1), 1.0, -1.0)
                values = sign * class_probability(self.classifier, path, classes[pair]) / self.steps
                loss = loss.index_add(0, pair, values.detach())
                if grad:
                    chunk_grads = torch.autograd.grad(values.sum(), (del_mask, ins_mask))
                    grads = (grads[0] + chunk_grads[0], grads[1] + chunk_grads[1])
        return loss, grads

    def regularizer(self, normalized: Tensor, del_mask: Tensor, ins_mask: Tensor) -> Tensor:
        masks = del_mask * ins_mask
        return self.l1 * (1 - masks).abs().flatten(1).mean(1) + self.l2 * bilateral_tv(normalized, masks, 2.0, 0.01)

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        size = images.shape[-2:]
        baselines = self.baselines(images)
        normalized = self.classifier.normalize(images)
        std = self.classifier.std.to(images).view(1, 3, 1, 1)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (len(images), 1, self.mask_size, self.mask_size)
        del_mask = torch.ones(shape, device=images.device)
        ins_mask = torch.ones(shape, device=images.device)
        for _ in range(self.iterations):
            noise = (torch.randn(self.steps, 3, *size, generator=generator) * self.noise).to(images) * std
            del_mask.requires_grad_(True)
            ins_mask.requires_grad_(True)
            loss, (grad_del, grad_ins) = self.path_loss(images, baselines, classes, noise, del_mask, ins_mask, True)
            with torch.enable_grad():
                regularizer = self.regularizer(normalized, del_mask, ins_mask)
                reg_del, reg_ins = torch.autograd.grad(regularizer.sum(), (del_mask, ins_mask))
            del_mask, ins_mask = del_mask.detach(), ins_mask.detach()
            grad_del, grad_ins = grad_del / 2 + reg_del, grad_ins / 2 + reg_ins
            step = self.line_search(images, baselines, normalized, classes, noise, (del_mask, ins_mask),
                                    (grad_del, grad_ins), loss + regularizer.detach()).view(-1, 1, 1, 1)
            del_mask = (del_mask - step * grad_del).clamp(0, 1)
            ins_mask = (ins_mask - step * grad_ins).clamp(0, 1)
        return 1 - upsample_corners(del_mask * ins_mask, size).squeeze(1)

    def line_search(self, images: Tensor, baselines: Tensor, normalized: Tensor, classes: Tensor, noise: Tensor,
                    masks: tuple[Tensor, Tensor], grads: tuple[Tensor, Tensor], base: Tensor, beta: float = 1e-4,
                    decay: float = 0.2, min_alpha: float = 1e-5) -> Tensor:
        """Per-pair backtracking (Armijo) step sizes (P,), as the official ``line_search``.

        ``base`` (P,): the objective at the current masks (the gradient pass's path loss + regulariser, same
        noise). A pair leaves the search once its step is accepted or has decayed below ``min_alpha`` (that
        last step is returned unevaluated, as its test could not change it): at most
        ceil(log(alpha/min_alpha)/log(1/decay)) = 12 trial evaluations at the defaults, at least one.
        """

        def objective(index: Tensor, step: Tensor) -> Tensor:
            del_mask = (masks[0][index] - step.view(-1, 1, 1, 1) * grads[0][index]).clamp(0, 1)
            ins_mask = (masks[1][index] - step.view(-1, 1, 1, 1) * grads[1][index]).clamp(0, 1)
            loss, _ = self.path_loss(images[index], baselines[index], classes[index], noise, del_mask, ins_mask, False)
            return loss + self.regularizer(normalized[index], del_mask, ins_mask)

        with torch.no_grad():
            every = torch.arange(len(images), device=images.device)
            slope = -beta * (grads[0].square() + grads[1].square()).flatten(1).sum(1)
            alphas = torch.full((len(images),), self.alpha, device=images.device)
            active = torch.ones(len(images), dtype=torch.bool, device=images.device)
            while active.any():
                index = every[active]
                failed = objective(index, alphas[index]) > base[index] + alphas[index] * slope[index]
                alphas[index[failed]] *= decay
                active[index] = failed & (alphas[index] >= min_alpha)
        return alphas

    def passes(self, height: int, width: int) -> Passes:
        rows = self.iterations * self.terms * self.steps
        return Passes(forward=2 * rows, backward=rows)  # the gradient pass and at least one line-search trial
