"""Mask-optimisation attributions: extremal perturbations, meaningful perturbations, iGOS++.

Each (image, target) pair (× area for EP) optimises its own mask; all of a chunk's masks form
one batched parameter tensor, and the losses are summed over independent pairs, so SGD / Adam
(element-wise) and the per-pair line search give the same result batched as one at a time.
Randomness (MP's and iGOS++'s noise) is drawn from ``seed`` on the CPU and shared by all pairs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from saliencylab.methods.base import Method, Passes, register
from saliencylab.methods.perturbation import blurred
from saliencylab.models.classifier import Classifier

VARIANTS = ("preserve", "delete", "dual")
REWARDS = ("simple", "contrastive")
SELECTIONS = ("smallest_preserving", "sum")
EPS32 = 1.1920929e-07


def check_classes(logits: Tensor, classes: Tensor) -> None:
    if int(classes.max()) >= logits.shape[1]:
        raise ValueError(f"target class {int(classes.max())} is out of range for a classifier with "
                         f"{logits.shape[1]} classes (expected 0..{logits.shape[1] - 1})")


def gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """TorchRay's ``imsmooth``: separable Gaussian, half-width ⌈4σ⌉, kernel summing to 1, zero padding."""
    half = math.ceil(4 * sigma)
    taps = torch.arange(-half, half + 1, dtype=torch.float32, device=x.device) / (math.sqrt(2) * sigma + EPS32)
    kernel = (-taps * taps).exp()
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(half, 0), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, half), groups=channels)


def blur_pyramid(classifier: Classifier, images: Tensor, num_levels: int, max_blur: float = 20.0) -> Tensor:
    """(N,L,3,H,W): level l blurred with σ = max_blur·(1 − l/(L−1)) (level L−1 is the image), as TorchRay's.

    TorchRay blurs the normalised image with zero padding; in [0,1] space that is blurring
    x − mean with zero padding (borders fade to the mean colour).
    """
    mean = classifier.mean.to(images).view(1, 3, 1, 1)
    levels = [gaussian_smooth(images - mean, float((1 - s) * max_blur)) + mean
              for s in torch.linspace(0, 1, num_levels)]
    return torch.stack(levels, dim=1)


def apply_pyramid(pyramid: Tensor, masks: Tensor) -> Tensor:
    """Perturbed images (N,K,3,H,W) for masks (N,K,H,W) in [0,1]: linear interpolation of the
    pyramid (N,L,3,H,W) levels at mask·(L−1) (1 keeps the image, 0 is the most blurred)."""
    n, k = masks.shape[:2]
    levels = pyramid.shape[1]
    scaled = (masks * (levels - 1)).unsqueeze(2)  # (N,K,1,H,W)
    index = scaled.floor()
    weight = scaled - index
    index = index.long().unsqueeze(2).expand(n, k, 1, 3, *masks.shape[2:])  # (N,K,1,3,H,W)
    source = pyramid.unsqueeze(1).expand(n, k, *pyramid.shape[1:])
    low = source.gather(2, index).squeeze(2)
    high = source.gather(2, (index + 1).clamp(max=levels - 1)).squeeze(2)
    return (1 - weight) * low + weight * high


class SmoothMaxMask:
    """TorchRay's ``MaskGenerator``: masks (R,1,H,W) from parameters (R,1,⌈H/step⌉,⌈W/step⌉) in [0,1].

    Each parameter is a bump of radius σ (profile exp(−2·max(d/σ − ½, 0)²)) on a grid of pitch
    ``step``; bumps are combined by a smooth max (softmax pooling, coldness 20) and clamped to [0,1].
    ``generate`` returns the mask cropped to H×W and the full mask with its margin of σ px (the
    area constraint is taken on the full one, as TorchRay).
    """

    coldness = 20.0

    def __init__(self, shape: tuple[int, int], step: int, sigma: float, device: torch.device) -> None:
        self.shape, self.step, self.margin = shape, step, round(sigma)
        self.padding = 1 + math.ceil(2 * sigma / step)
        self.radius = 1 + math.ceil(sigma / step)
        self.shape_in = [math.ceil(z / step) for z in shape]
        self.shape_mid = [z + 2 * self.padding - 2 * self.radius for z in self.shape_in]
        self.shape_up = [step * z for z in self.shape_mid]
        self.shape_out = [z - step + 1 for z in self.shape_up]
        taps = 2 * self.radius + 1
        axes = []
        for mid, up, out in zip(self.shape_mid, self.shape_up, self.shape_out):
            u = torch.arange(out, dtype=torch.float32)
            cell = torch.floor(torch.tensor(mid, dtype=torch.float32) / torch.tensor(up, dtype=torch.float32) * u)
            centre = sigma + step * (cell[None, :] + torch.arange(taps, dtype=torch.float32)[:, None] - self.padding)
            axes.append(u[None, :] - centre)  # (taps, out): offset of pixel u from the bump centre of tap k
        dy, dx = axes
        distance = (dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2).sqrt() / sigma  # (taps,taps,Ho,Wo)
        self.weight = (-2 * (distance - 0.5).clamp(min=0) ** 2).exp().view(1, taps * taps, *self.shape_out).to(device)

    def generate(self, params: Tensor) -> tuple[Tensor, Tensor]:
        taps = 2 * self.radius + 1
        mask = F.unfold(params, (taps, taps), padding=self.padding).view(len(params), -1, *self.shape_mid)
        mask = F.interpolate(mask, size=self.shape_up, mode="nearest")[..., :self.shape_out[0], :self.shape_out[1]]
        mask = self.weight * mask
        mask = (mask * (self.coldness * mask).softmax(dim=1)).sum(dim=1, keepdim=True).clamp(0, 1)
        m = self.margin
        return mask[:, :, m:m + self.shape[0], m:m + self.shape[1]], mask


def reward(logits: Tensor, classes: Tensor, contrastive: bool) -> Tensor:
    """logit_c (simple) or logit_c − max_{c'≠c} logit_c' (contrastive): (R,) for logits (R,C), classes (R,)."""
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    if not contrastive:
        return own
    others = logits.scatter(1, classes.view(-1, 1), float("-inf")).amax(dim=1)
    return own - others


@register("extremal_perturbation")
class ExtremalPerturbation(Method):
    """Extremal perturbations (Fong, Patrick & Vedaldi, 2019): max_m reward(F(blur_m(x))) s.t. area(m) = a, per area a.

    TorchRay's algorithm, re-implemented batched over (pair × area): the image is perturbed by a
    blur pyramid (``num_levels=8`` levels, σ up to 20 px, see :func:`blur_pyramid`) indexed by
    the mask; the mask is a smooth max of bumps on a grid of ``step=7`` px with radius
    ``sigma=21`` px (:class:`SmoothMaxMask`), parameters initialised to 1; SGD (lr 0.01,
    momentum 0.9, dampening 0.9) for ``max_iter=800`` iterations on reward − 300·1.0035^t ·
    mean((sort(m) − r_a)²), r_a the sorted 0/1 vector of area a; ``jitter`` flips the image
    horizontally at even iterations; parameters are clamped to [0,1] after each step. The
    result is the mask of the last iteration's forward (as TorchRay), smoothed by a Gaussian of
    σ = ``smooth``·min(H,W) (zero padding). ``variant``: ``"preserve"`` (keep m, blur the rest),
    ``"delete"`` (blur m), ``"dual"`` (reward(preserve) − reward(delete)). ``reward`` on the raw
    logits: ``"contrastive"`` (logit_c − max other logit; NN-Explainer) or ``"simple"``
    (logit_c; TorchRay's default). Defaults follow NN-Explainer (spec 000 §7): areas
    (0.05, 0.1, 0.2, 0.3), contrastive, smooth 0.09, and ``select="smallest_preserving"``: the
    smallest area whose preserved image (blur pyramid with the final mask) has logit_c ≥ the
    original logit_c, else the largest area; ``select="sum"`` sums the area masks (TorchRay's
    benchmark); the test uses the smoothed masks. Maps are in [0,1] (``sum``: [0, #areas]),
    1 = salient. As TorchRay, an area is a fraction of the full mask with its σ-px margin
    ((H+~2σ)(W+~2σ) px): on small images scale ``step``/``sigma`` down. EP is deterministic
    (TorchRay's jitter is a fixed flip schedule), so it takes no seed. Memory: each group of
    ⌊max_batch/#areas⌋ pairs holds (rows, (2⌈σ/step⌉+3)², H+2σ, W+2σ) mask tensors; lower
    ``max_batch`` for large images.
    """

    output_range = "unit"  # "nonnegative" with select="sum"

    def __init__(self, classifier: Classifier, *, areas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3),
                 variant: str = "preserve", max_iter: int = 800, num_levels: int = 8, step: int = 7,
                 sigma: float = 21.0, jitter: bool = True, smooth: float = 0.09, reward: str = "contrastive",
                 select: str = "smallest_preserving", max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        areas = tuple(float(a) for a in areas)
        if not areas or not all(0 < a < 1 for a in areas):
            raise ValueError(f"areas must be a non-empty tuple of fractions in (0, 1), got {areas}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if max_iter < 1 or num_levels < 2 or step < 1 or sigma <= 0 or smooth < 0:
            raise ValueError(f"need max_iter >= 1, num_levels >= 2, step >= 1, sigma > 0, smooth >= 0; got max_iter="
                             f"{max_iter}, num_levels={num_levels}, step={step}, sigma={sigma}, smooth={smooth}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        self.areas, self.variant, self.max_iter, self.num_levels = areas, variant, max_iter, num_levels
        self.step, self.sigma, self.jitter, self.smooth, self.reward, self.select = (
            step, sigma, jitter, smooth, reward, select)
        self.output_range = "nonnegative" if select == "sum" else "unit"

    def area_masks(self, images: Tensor, classes: Tensor) -> Tensor:
        """The optimised masks (N,A,H,W) in [0,1], one per area, before smoothing and selection."""
        n, _, height, width = images.shape
        areas = len(self.areas)
        pyramid = blur_pyramid(self.classifier, images, self.num_levels)
        generator = SmoothMaxMask((height, width), self.step, self.sigma, images.device)
        params = torch.ones(n * areas, 1, *generator.shape_in, device=images.device)
        full = generator.shape_out[0] * generator.shape_out[1]
        reference = torch.ones(areas, full, device=images.device)
        for i, area in enumerate(self.areas):
            reference[i, :int(full * (1 - area))] = 0
        reference = reference.repeat(n, 1)
        buffer, weight = None, 300.0
        for t in range(self.max_iter):
            params.requires_grad_(True)
            with torch.enable_grad():
                mask, mask_full = generator.generate(params)
                kept = mask.view(n, areas, height, width)
                stack = {"preserve": [kept], "delete": [1 - kept], "dual": [kept, 1 - kept]}[self.variant]
                x = torch.cat([apply_pyramid(pyramid, m) for m in stack], dim=1)  # (N, A·games, 3,H,W)
                if self.jitter and t % 2 == 0:
                    x = x.flip(-1)
                logits = self.classifier(x.flatten(0, 1))
                if t == 0:
                    check_classes(logits, classes)
                games = reward(logits, classes.repeat_interleave(areas * len(stack)),
                               self.reward == "contrastive").view(n, len(stack), areas)
                gain = -games[:, 0] if self.variant == "delete" else games[:, 0] - games[:, 1:].sum(1)
                regul = ((mask_full.view(n * areas, -1).sort(dim=1).values - reference) ** 2).mean(dim=1) * weight
                (grad,) = torch.autograd.grad(regul.sum() - gain.sum(), params)
            buffer = grad if buffer is None else 0.9 * buffer + 0.1 * grad
            params = (params.detach() - 0.01 * buffer).clamp(0, 1)
            weight *= 1.0035
        return mask.detach().view(n, areas, height, width)

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        per_group = max(1, self.max_batch // (len(self.areas) * (2 if self.variant == "dual" else 1)))
        return torch.cat([self.select_mask(x, c) for x, c in zip(images.split(per_group), classes.split(per_group))])

    def select_mask(self, images: Tensor, classes: Tensor) -> Tensor:
        """The map (N,H,W) of a group of pairs: optimise, smooth, then select or sum the area masks."""
        masks = self.area_masks(images, classes)
        if self.smooth > 0:
            masks = gaussian_smooth(masks, self.smooth * min(masks.shape[-2:]))
        if self.select == "sum":
            return masks.sum(dim=1)
        order = sorted(range(len(self.areas)), key=lambda i: self.areas[i])
        with torch.no_grad():
            pyramid = blur_pyramid(self.classifier, images, self.num_levels)
            kept = apply_pyramid(pyramid, masks[:, order])
            logits = self.classifier(torch.cat([images, kept.flatten(0, 1)])).gather(
                1, torch.cat([classes, classes.repeat_interleave(len(order))]).view(-1, 1)).view(-1)
        original, preserved = logits[:len(images)], logits[len(images):].view(len(images), len(order))
        ok = preserved >= original[:, None]
        ok[:, -1] = True  # none preserves: the largest area
        choice = torch.tensor(order, device=images.device)[ok.float().argmax(dim=1)]
        return masks[torch.arange(len(images), device=images.device), choice]

    def passes(self, height: int, width: int) -> Passes:
        rows = self.max_iter * len(self.areas) * (2 if self.variant == "dual" else 1)
        return Passes(forward=rows, backward=rows)


def tv_norm(masks: Tensor, beta: float) -> Tensor:
    """Σ over both axes of mean |neighbour difference|^β: (N,) for masks (N,1,h,w)."""
    rows = (masks[..., :-1, :] - masks[..., 1:, :]).abs().pow(beta).flatten(1).mean(1)
    cols = (masks[..., :, :-1] - masks[..., :, 1:]).abs().pow(beta).flatten(1).mean(1)
    return rows + cols


def upsample_corners(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(N,1,h,w) -> (N,1,H,W), bilinear with aligned corners (``nn.UpsamplingBilinear2d``, as both references)."""
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=True)


def class_probability(classifier: Classifier, images: Tensor, classes: Tensor) -> Tensor:
    """Softmax probability (N,) of classes (N,)."""
    logits = classifier(images)
    check_classes(logits, classes)
    return logits.softmax(dim=1).gather(1, classes.view(-1, 1)).squeeze(1)


@register("meaningful_perturbation")
class MeaningfulPerturbation(Method):
    """Meaningful perturbation (Fong & Vedaldi, 2017): min_m λ1‖1−m‖₁ + λ2 TV_β(m) + p_c(m·x + (1−m)·blur(x) + noise).

    The deletion game; the map is 1 − m upsampled (1 = deleted = salient), in [0,1]. m is a
    ``mask_size``² (28, paper) mask initialised to 1, upsampled bilinearly (aligned corners),
    optimised by Adam (``lr=0.1``, paper and re-implementation) for ``max_iter=300`` (paper)
    iterations and clamped to [0,1] after each step. Coefficients from the common PyTorch
    re-implementation (jacobgil/pytorch-explain-black-box): ``l1=0.01``, ``tv=0.2``,
    ``tv_beta=3`` (the paper's β; its λ1 = 1e-4, λ2 = 1e-2 are for a sum, not a mean); L1 and TV
    are means over the low-resolution mask; p_c is the softmax probability. Blur: Gaussian
    ``blur_sigma=10`` px (paper's σ0; the re-implementation averages a 11×11 σ=5 Gaussian and a
    median blur). Noise: N(0, ``noise``=0.2) in [0,1] space added to the perturbed image each
    iteration (re-implementation), one (3,H,W) draw per iteration from ``seed``, shared by all pairs.
    """

    output_range = "unit"

    def __init__(self, classifier: Classifier, *, max_iter: int = 300, lr: float = 0.1, l1: float = 0.01,
                 tv: float = 0.2, tv_beta: float = 3.0, mask_size: int = 28, blur_sigma: float = 10.0,
                 noise: float = 0.2, seed: int = 0, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if max_iter < 1 or lr <= 0 or mask_size < 2 or blur_sigma <= 0:
            raise ValueError(f"need max_iter >= 1, lr > 0, mask_size >= 2, blur_sigma > 0; got max_iter={max_iter}, "
                             f"lr={lr}, mask_size={mask_size}, blur_sigma={blur_sigma}")
        if l1 < 0 or tv < 0 or tv_beta <= 0 or noise < 0:
            raise ValueError(f"need l1, tv, noise >= 0 and tv_beta > 0; got l1={l1}, tv={tv}, tv_beta={tv_beta}, "
                             f"noise={noise}")
        self.max_iter, self.lr, self.l1, self.tv, self.tv_beta = max_iter, lr, l1, tv, tv_beta
        self.mask_size, self.blur_sigma, self.noise, self.seed = mask_size, blur_sigma, noise, seed

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        size = images.shape[-2:]
        background = blurred(images, self.blur_sigma)
        generator = torch.Generator().manual_seed(self.seed)
        mask = torch.ones(len(images), 1, self.mask_size, self.mask_size, device=images.device, requires_grad=True)
        optimiser = torch.optim.Adam([mask], lr=self.lr)
        for _ in range(self.max_iter):
            noise = (torch.randn(1, 3, *size, generator=generator) * self.noise).to(images)
            with torch.enable_grad():
                up = upsample_corners(mask, size)
                perturbed = images * up + background * (1 - up) + noise
                loss = (self.l1 * (1 - mask).abs().flatten(1).mean(1) + self.tv * tv_norm(mask, self.tv_beta)
                        + class_probability(self.classifier, perturbed, classes))
                optimiser.zero_grad()
                loss.sum().backward()
            optimiser.step()
            with torch.no_grad():
                mask.clamp_(0, 1)
        return 1 - upsample_corners(mask.detach(), size).squeeze(1)

    def passes(self, height: int, width: int) -> Passes:
        return Passes(forward=self.max_iter, backward=self.max_iter)


def bilateral_tv(normalised: Tensor, masks: Tensor, beta: float, sigma: float) -> Tensor:
    """iGOS++'s bilateral TV (N,): ½(TV_β(m) + mean w_y|Δ_y up(m)|^β + mean w_x|Δ_x up(m)|^β), m (N,1,h,w).

    Edge weights from the normalised image (N,3,H,W), as the official code (``bilateral_tv_norm``):
    w_y = exp(−mean_c(Δ_y I)²/σ), w_x = mean_c exp(−(Δ_x I)²/σ) (its two axes differ; kept).
    """
    up = upsample_corners(masks, normalised.shape[-2:])
    weight_y = (-(normalised[..., :-1, :] - normalised[..., 1:, :]).mean(1, keepdim=True) ** 2 / sigma).exp()
    weight_x = (-(normalised[..., :, :-1] - normalised[..., :, 1:]) ** 2 / sigma).exp().mean(1, keepdim=True)
    edges_y = (weight_y * (up[..., :-1, :] - up[..., 1:, :]).abs().pow(beta)).flatten(1).mean(1)
    edges_x = (weight_x * (up[..., :, :-1] - up[..., :, 1:]).abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (tv_norm(masks, beta) + edges_y + edges_x)


@register("igos_pp")
class IGOSPlusPlus(Method):
    """iGOS++ (Khorram et al., 2021): deletion and insertion masks optimised with integrated gradients; map 1 − up(m_del·m_ins).

    Defaults as NN-Explainer runs the official code (spec 000 §7): ``mask_size=28`` masks (28×28
    whatever the image size) initialised to 1, ``iterations=20`` optimisation steps, ``steps=15``
    integration points α ∈ {1/n, …, 1}; softmax probabilities p_c. Per pair the loss is
    Σ_α [p(x·αM_d + b(1−αM_d)) − p(b·αM_i + x(1−αM_i)) + p(x·αM + b(1−αM)) − p(b·αM + x(1−αM))]/n
    with M = M_d·M_i (deletion and insertion games on each mask and on their product), plus
    ``l1=1``·mean|1 − m| + ``l2=20``·bilateral TV (β=2, σ=0.01, :func:`bilateral_tv`) of
    m = m_d·m_i. The step follows the gradient of (path loss)/2 + regulariser (as the official
    code), with a per-pair backtracking line search on path loss + regulariser: α from
    ``alpha=1000``, Armijo β = 1e-4, decay 0.2, stopping below 1e-5; masks are clamped to [0,1].
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
        radius = min(round(25 * scale), min(images.shape[-2:]) - 1)
        return gaussian_blur(images, [2 * radius + 1] * 2, [50 * scale] * 2)

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

    def regulariser(self, normalised: Tensor, del_mask: Tensor, ins_mask: Tensor) -> Tensor:
        masks = del_mask * ins_mask
        return self.l1 * (1 - masks).abs().flatten(1).mean(1) + self.l2 * bilateral_tv(normalised, masks, 2.0, 0.01)

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        size = images.shape[-2:]
        baselines = self.baselines(images)
        normalised = self.classifier.normalize(images)
        std = self.classifier.std.to(images).view(1, 3, 1, 1)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (len(images), 1, self.mask_size, self.mask_size)
        del_mask = torch.ones(shape, device=images.device)
        ins_mask = torch.ones(shape, device=images.device)
        for _ in range(self.iterations):
            noise = (torch.randn(self.steps, 3, *size, generator=generator) * self.noise).to(images) * std
            del_mask.requires_grad_(True)
            ins_mask.requires_grad_(True)
            _, (grad_del, grad_ins) = self.path_loss(images, baselines, classes, noise, del_mask, ins_mask, True)
            with torch.enable_grad():
                reg_del, reg_ins = torch.autograd.grad(self.regulariser(normalised, del_mask, ins_mask).sum(),
                                                       (del_mask, ins_mask))
            del_mask, ins_mask = del_mask.detach(), ins_mask.detach()
            grad_del, grad_ins = grad_del / 2 + reg_del, grad_ins / 2 + reg_ins
            step = self.line_search(images, baselines, normalised, classes, noise, (del_mask, ins_mask),
                                    (grad_del, grad_ins)).view(-1, 1, 1, 1)
            del_mask = (del_mask - step * grad_del).clamp(0, 1)
            ins_mask = (ins_mask - step * grad_ins).clamp(0, 1)
        return 1 - upsample_corners(del_mask * ins_mask, size).squeeze(1)

    def line_search(self, images: Tensor, baselines: Tensor, normalised: Tensor, classes: Tensor, noise: Tensor,
                    masks: tuple[Tensor, Tensor], grads: tuple[Tensor, Tensor], beta: float = 1e-4,
                    decay: float = 0.2, min_alpha: float = 1e-5) -> Tensor:
        """Per-pair backtracking (Armijo) step sizes (P,), as the official ``line_search``."""

        def objective(index: Tensor, step: Tensor | None) -> Tensor:
            del_mask, ins_mask = masks[0][index], masks[1][index]
            if step is not None:
                del_mask = (del_mask - step.view(-1, 1, 1, 1) * grads[0][index]).clamp(0, 1)
                ins_mask = (ins_mask - step.view(-1, 1, 1, 1) * grads[1][index]).clamp(0, 1)
            loss, _ = self.path_loss(images[index], baselines[index], classes[index], noise, del_mask, ins_mask, False)
            return loss + self.regulariser(normalised[index], del_mask, ins_mask)

        with torch.no_grad():
            every = torch.arange(len(images), device=images.device)
            base = objective(every, None)
            slope = -beta * (grads[0].square() + grads[1].square()).flatten(1).sum(1)
            alphas = torch.full((len(images),), self.alpha, device=images.device)
            active = torch.ones(len(images), dtype=torch.bool, device=images.device)
            while active.any():
                index = every[active]
                losses = objective(index, alphas[index])
                keep = (losses > base[index] + alphas[index] * slope[index]) & (alphas[index] >= min_alpha)
                active[index] = keep
                alphas[index[keep]] *= decay
        return alphas

    def passes(self, height: int, width: int) -> Passes:
        rows = self.iterations * self.terms * self.steps
        return Passes(forward=3 * rows, backward=rows)  # gradient, line-search base and at least one trial
