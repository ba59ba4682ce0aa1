"""Masking schedules for absorbing-state ("masked") discrete diffusion.

A schedule gives the probability ``m(t)`` that a token is [MASK] at noise level
``t in [0, 1]`` (``t = 0`` clean, ``t = 1`` fully masked).  With the keep
probability ``alpha(t) = 1 - m(t)`` the continuous-time negative ELBO (MDLM,
Sahoo et al. 2024) is

    -ELBO = E_{t ~ U(0,1)} E_{x_t} [ w(t) * sum_{i masked} -log p(x0_i | x_t) ],
    w(t) = -alpha'(t) / (1 - alpha(t)) = m'(t) / m(t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "LinearSchedule",
    "CosineSchedule",
    "LogLinearSchedule",
    "SCHEDULES",
    "get_schedule",
]

_SAMPLE_METHODS = ("uniform", "stratified", "antithetic")


class Schedule:
    """Base class.  Subclasses define :meth:`mask_prob` (and a closed-form :meth:`weight`).

    ``eps`` is the smallest noise level drawn by :meth:`sample_t`; it keeps the
    weight ``w(t)`` (which diverges like ``1/t``) finite.
    """

    name: str = "base"

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"

    def mask_prob(self, t: Tensor) -> Tensor:
        """Probability ``m(t)`` that a token is masked at noise level ``t``."""
        raise NotImplementedError

    def alpha(self, t: Tensor) -> Tensor:
        """Keep probability ``alpha(t) = 1 - m(t)``."""
        return 1.0 - self.mask_prob(t)

    def weight(self, t: Tensor) -> Tensor:
        """ELBO weight ``-alpha'(t) / (1 - alpha(t))``.

        Generic fallback via autograd; subclasses override it with the closed form.
        """
        t = torch.as_tensor(t).detach()
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        with torch.enable_grad():
            t_req = t.clone().requires_grad_(True)
            m = self.mask_prob(t_req)
            (dm,) = torch.autograd.grad(m.sum(), t_req)
        return dm / m.detach()

    def sample_t(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        method: str = "uniform",
    ) -> Tensor:
        """Draw ``n`` noise levels in ``[eps, 1]`` (float32, shape ``(n,)``).

        ``u in [0, 1)`` is drawn by ``method`` and mapped to ``eps + (1 - eps) u``:

        * ``"uniform"``: i.i.d. ``u ~ U(0, 1)``.
        * ``"stratified"``: one draw in each bin ``[k/n, (k+1)/n)``, in shuffled order
          (low-discrepancy, lowers the variance of the batch loss).
        * ``"antithetic"``: the first ``ceil(n/2)`` values are ``u``, the next ones ``1 - u``
          (so ``t[i]`` and ``t[ceil(n/2) + i]`` pair up).
        """
        if method not in _SAMPLE_METHODS:
            raise ValueError(f"unknown sampling method {method!r}; valid: {', '.join(_SAMPLE_METHODS)}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if device is None and generator is not None:
            device = generator.device
        if method == "uniform":
            u = torch.rand(n, generator=generator, device=device)
        elif method == "stratified":
            bins = torch.randperm(n, generator=generator, device=device)
            u = (bins + torch.rand(n, generator=generator, device=device)) / max(n, 1)
        else:  # antithetic
            half = torch.rand((n + 1) // 2, generator=generator, device=device)
            u = torch.cat([half, 1.0 - half])[:n]
        return self.eps + (1.0 - self.eps) * u


class LinearSchedule(Schedule):
    """``m(t) = t``, ``w(t) = 1/t`` (MDLM / LLaDA / DiffuGPT)."""

    name = "linear"

    def mask_prob(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t).clone()

    def weight(self, t: Tensor) -> Tensor:
        return 1.0 / torch.as_tensor(t)


class CosineSchedule(Schedule):
    """MaskGIT / Meissonic: ``m(t) = cos(pi/2 (1 - t)) = sin(pi t / 2)``.

    ``w(t) = m'(t) / m(t) = (pi/2) cos(pi t / 2) / sin(pi t / 2)``.
    """

    name = "cosine"

    def mask_prob(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * torch.as_tensor(t))

    def weight(self, t: Tensor) -> Tensor:
        half_pi_t = 0.5 * math.pi * torch.as_tensor(t)
        return 0.5 * math.pi * torch.cos(half_pi_t) / torch.sin(half_pi_t)


class LogLinearSchedule(Schedule):
    """MDLM log-linear: ``m(t) = (1 - eps) t``, i.e. ``sigma(t) = -log(1 - (1 - eps) t)``.

    ``w(t) = (1 - eps) / ((1 - eps) t) = 1/t``; at ``t = 1`` a fraction ``eps`` stays clean.
    """

    name = "loglinear"

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * torch.as_tensor(t)

    def weight(self, t: Tensor) -> Tensor:
        return 1.0 / torch.as_tensor(t)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (LinearSchedule, CosineSchedule, LogLinearSchedule)
}


def get_schedule(name: str, eps: float = 1e-3) -> Schedule:
    """Build a schedule by name: ``"linear"``, ``"cosine"`` or ``"loglinear"``."""
    try:
        cls = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}") from None
    return cls(eps=eps)
