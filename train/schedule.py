"""The ProVQ schedule (arXiv 2603.22304): warm up continuous, initialise the codebook, blend to discrete.

With t the step counted from the end of the warm-up and T the transition length:

    alpha(t) = (1 + cos(pi * t / T)) / 2          cosine (default); 1 - t/T linear; exp(-5 t/T) exponential
    alpha(t) = 0                                   for t >= T (hard VQ with straight-through gradients)
    z~       = alpha * z + (1 - alpha) * (z + sg(q - z))        decoder input
    w(t)     = lam + (1 - lam) * (1 - alpha(t))                weight of codebook + commitment losses

Phases by global step s and warm-up length W:
    s < W           "warmup": a plain continuous autoencoder, no quantizer, no VQ loss
    s == W          the codebook is initialised by k-means on warmed-up latents (by the trainer)
    W <= s < W + T  "transition"
    s >= W + T      "hard"

The ``hard`` kind is the baseline: random codebook, hard VQ and full VQ-loss weight from step 0.
The schedule is a pure function of the step, so a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ProvqError

KINDS = ("provq", "hard")
CURVES = ("cosine", "linear", "exponential")


@dataclass(frozen=True)
class Schedule:
    """Hardness of the quantizer as a function of the optimizer step."""

    kind: str = "provq"  # "provq" (warm-up, k-means, transition, hard) or "hard" (hard VQ from step 0)
    warmup_steps: int = 0  # continuous autoencoder steps before the codebook is initialised
    transition_steps: int = 0  # T: steps over which alpha goes from 1 to 0
    curve: str = "cosine"  # shape of alpha over the transition: cosine, linear or exponential
    lam: float = 0.5  # VQ-loss weight at the start of the transition (it ramps to 1)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProvqError(f"unknown schedule {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.curve not in CURVES:
            raise ProvqError(f"unknown transition curve {self.curve!r}: choose one of {', '.join(CURVES)}")
        if self.warmup_steps < 0 or self.transition_steps < 0:
            raise ProvqError("warm-up and transition steps must be >= 0")
        if not 0.0 <= self.lam <= 1.0:
            raise ProvqError(f"lambda must lie in [0, 1], got {self.lam}")
        if self.kind == "hard" and (self.warmup_steps or self.transition_steps):
            raise ProvqError("the hard schedule has no warm-up or transition; drop --warmup-steps/--transition-steps")

    @property
    def kmeans_step(self) -> int | None:
        """The step at which the codebook is initialised by k-means (None: random init at step 0)."""
        return self.warmup_steps if self.kind == "provq" else None

    @property
    def hard_from(self) -> int:
        """First step of plain hard VQ."""
        return self.warmup_steps + self.transition_steps

    def phase(self, step: int) -> str:
        """ "warmup", "transition" or "hard"."""
        if self.kind == "hard" or step >= self.hard_from:
            return "hard"
        return "warmup" if step < self.warmup_steps else "transition"

    def alpha(self, step: int) -> float:
        """Blend weight of the continuous latent: 1 = continuous, 0 = fully quantized."""
        phase = self.phase(step)
        if phase == "warmup":
            return 1.0
        if phase == "hard":
            return 0.0
        frac = (step - self.warmup_steps) / self.transition_steps
        if self.curve == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        if self.curve == "linear":
            return 1.0 - frac
        return math.exp(-5.0 * frac)

    def loss_weight(self, step: int) -> float:
        """Weight w(t) of the codebook and commitment losses: 0 in warm-up, lam -> 1 in the transition, then 1."""
        if self.phase(step) == "warmup":
            return 0.0
        return self.lam + (1.0 - self.lam) * (1.0 - self.alpha(step))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        return cls(**data)
