"""Infillers of masking-based saliency training (Phang et al. 2020): what replaces the removed pixels.

All work on *normalised* images x (B,3,H,W) and a mask m (B,1,H,W) in [0,1] (1 = keep for the
mask-in image). An infiller gives a fill G for the "hole" and composes without re-masking:

    x_in  = x⊙m + G_in⊙(1−m)        x_out = x⊙(1−m) + G_out⊙m

G is made under no_grad from the detached hole (the infiller is frozen), so the gradient w.r.t. m
flows only through these formulas. ``sides`` says which images are infilled (the original's
``do_infill_for_mask_in`` / ``_out``); the other side keeps the plain product (G = 0).

- :class:`Infiller` (``"none"``, the default): no fill, G = 0, i.e. removed pixels become 0 in normalised
  space, the dataset's mean colour.
- :class:`BlurInfiller` (``"blur"``): G = Gaussian blur of the original x (σ=20 in the original, half-width
  ⌈4σ⌉, zero padding; :func:`saliencylab.perturb.blur_zero_padded`).
- :class:`NoiseInfiller` (``"noise"``): the release has none (its uniform-noise function returns None);
  here G = normalise(u), u ~ U(0,1) i.i.d. per pixel and channel, fresh for every image and side:
  uniform noise in image space, drawn from a seeded generator.
- :class:`GeneratorInfiller` (``"generator"``): a user's inpainting network (the CA-GAN / DFNet slot),
  given with its weights: ``generator(holed, hole)`` takes images in [0,1] with the hole zeroed
  (``image ⊙ (1 − hole)``) and the hole (B,1,H,W) (soft, as the mask is), and returns (B,3,H,W) in [0,1];
  any model-specific scaling (CA-GAN's [−1,1], DFNet's 256 px) belongs in the user's wrapper.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from saliencylab.perturb import blur_zero_padded

INFILLERS = ("none", "blur", "noise", "generator")
SIDES = ("in", "out")


class Infiller(nn.Module):
    """No infilling; the base of the others, which override :meth:`fill`. ``forward(x, m) -> (x_in, x_out)``."""

    def __init__(self, sides: Sequence[str] = SIDES) -> None:
        super().__init__()
        if not set(sides) <= set(SIDES):
            raise ValueError(f"infill sides must be among {SIDES}, got {list(sides)}")
        self.sides = tuple(sides)

    def fill(self, x: Tensor, hole: Tensor) -> Tensor | None:
        """G (B,3,H,W), normalised, for the hole (B,1,H,W) (1 = to fill); None = no fill (G = 0)."""
        return None

    def forward(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """Masked-in and masked-out images (B,3,H,W), normalised, for x (B,3,H,W) and m (B,1,H,W)."""
        with torch.no_grad():
            hole = m.detach()
            g_in = self.fill(x, 1 - hole) if "in" in self.sides else None
            g_out = self.fill(x, hole) if "out" in self.sides else None
        x_in = x * m if g_in is None else x * m + g_in * (1 - m)
        x_out = x * (1 - m) if g_out is None else x * (1 - m) + g_out * m
        return x_in, x_out


class BlurInfiller(Infiller):
    """G = Gaussian blur (σ = ``sigma`` pixels) of the original normalised image."""

    def __init__(self, sigma: float = 20.0, sides: Sequence[str] = SIDES) -> None:
        super().__init__(sides)
        self.sigma = sigma

    def fill(self, x: Tensor, hole: Tensor) -> Tensor:
        return blur_zero_padded(x, self.sigma)


class _Normalized(Infiller):
    """An infiller that makes G in image space [0,1] and normalises it with the classifier's mean/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], sides: Sequence[str] = SIDES) -> None:
        super().__init__(sides)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)


class NoiseInfiller(_Normalized):
    """G = normalise(u), u ~ U(0,1) per pixel and channel (our definition; the release has none)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], sides: Sequence[str] = SIDES,
                 seed: int = 0) -> None:
        super().__init__(mean, std, sides)
        self.rng = torch.Generator().manual_seed(seed)

    def fill(self, x: Tensor, hole: Tensor) -> Tensor:
        u = torch.rand(x.shape, generator=self.rng, dtype=x.dtype).to(x.device)
        return (u - self.mean) / self.std


class GeneratorInfiller(_Normalized):
    """G = normalise(generator(image ⊙ (1 − hole), hole)), a frozen user inpainting network (module docstring)."""

    def __init__(self, generator: Callable[[Tensor, Tensor], Tensor], mean: Sequence[float], std: Sequence[float],
                 sides: Sequence[str] = SIDES) -> None:
        super().__init__(mean, std, sides)
        if not callable(generator):
            raise TypeError("generator must be a callable (holed images, hole) -> images, "
                            f"got {type(generator).__name__}")
        if isinstance(generator, nn.Module):
            generator.requires_grad_(False).eval()
        self.generator = generator

    def train(self, mode: bool = True) -> "GeneratorInfiller":
        """The generator stays in eval mode."""
        super().train(mode)
        if isinstance(self.generator, nn.Module):
            self.generator.eval()
        return self

    def fill(self, x: Tensor, hole: Tensor) -> Tensor:
        image = x * self.std + self.mean
        out = self.generator(image * (1 - hole), hole)
        if out.shape != x.shape:
            raise ValueError(f"the infilling generator must return (B,3,H,W) images like its input {tuple(x.shape)}, "
                             f"got {tuple(out.shape)}")
        return (out - self.mean) / self.std


def build_infiller(kind: str, *, mean: Sequence[float], std: Sequence[float], sides: Sequence[str] = SIDES,
                   sigma: float = 20.0, generator: Callable[[Tensor, Tensor], Tensor] | None = None,
                   seed: int = 0) -> Infiller:
    """The infiller ``kind`` (one of INFILLERS); ``mean``/``std``: the classifier's normalisation."""
    if kind not in INFILLERS:
        raise ValueError(f"infiller must be one of {INFILLERS}, got {kind!r}")
    if (kind == "generator") != (generator is not None):
        raise ValueError("infiller='generator' needs generator=<inpainting network>, and only it takes one")
    if kind == "blur":
        return BlurInfiller(sigma, sides)
    if kind == "noise":
        return NoiseInfiller(mean, std, sides, seed)
    if kind == "generator":
        return GeneratorInfiller(generator, mean, std, sides)
    return Infiller(sides)
