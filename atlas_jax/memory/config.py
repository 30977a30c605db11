"""Static description of one memory (SPEC.md §1–§3): kind, feature map, bias, window, chunking, optimiser.

Everything here is a Python value known at trace time; arrays (queries, keys, gates, Φ_init, φ coefficients)
are arguments of the memory op. Changing ``chunk_size`` changes the function (SPEC.md §3.3), it is not only a
speed knob.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Literal

MemoryKind = Literal["linear", "mlp", "gated_mlp"]
FeatureMap = Literal["identity", "polynomial"]
Bias = Literal["l2", "dot"]
Granularity = Literal["token", "chunk"]

# Fast-weight matrices of each kind, in a fixed order (SPEC.md §1).
WEIGHT_NAMES: dict[str, tuple[str, ...]] = {
    "linear": ("W",),
    "mlp": ("W1", "W2"),
    "gated_mlp": ("W1", "W2", "W3"),
}


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"MemoryConfig.{name}={value!r}; expected one of {sorted(choices)}.")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """Hyperparameters of the inner-loop memory (static; hashable).

  Attributes:
    kind: ``linear`` (W φ(k)), ``mlp`` (W1 gelu(W2 φ(k))) or ``gated_mlp`` (W1 (silu(W2 φ) ⊙ W3 φ)).
    residual: add r(k) = k to the memory's output (needs K = V). ``None`` picks the SPEC default: on for the MLP
      kinds, off for ``linear``.
    feature_map: ``identity`` or ``polynomial`` (SPEC.md §2).
    degree: polynomial degree p (1..3; any positive integer for ``identity``, which ignores it).
    drop_constant: drop the degree-0 block of the polynomial features.
    bias: attentional bias (inner loss): ``l2`` = ½‖M(k) − v‖², ``dot`` = −⟨M(k), v⟩.
    window: Omega window W ≥ 1 (W = 1 is the online delta rule).
    chunk_size: gradient anchor period C ≥ 1 (part of the model's definition).
    momentum: use momentum S_t = θ_t S_{t−1} + g_t (needs the θ gate).
    muon: apply Newton–Schulz to the momentum before the update.
    ns_steps: Newton–Schulz iterations k.
    granularity: ``token`` updates Φ at every position; ``chunk`` only at chunk ends (SPEC.md §3.6).
    max_grad_norm: None (default) is SPEC.md's rule. A number c > 0 bounds every token's inner gradient at the
      anchor, ∇ℓ_i(A) ← ∇ℓ_i(A) · min(1, c / ‖∇ℓ_i(A)‖) (Frobenius norm over all weight matrices), before the
      window sum and momentum. Not in the papers: an opt-in stabiliser for MLP memories without Muon, whose
      curvature grows with their weights (README, Models: titans and omeganet diverge in training at
      T = 1,024, lr 3e-3 without it; Muon's Newton–Schulz already bounds every update).
  """

  kind: MemoryKind = "mlp"
  residual: bool | None = None
  feature_map: FeatureMap = "identity"
  degree: int = 2
  drop_constant: bool = False
  bias: Bias = "l2"
  window: int = 1
  chunk_size: int = 64
  momentum: bool = False
  muon: bool = False
  ns_steps: int = 5
  granularity: Granularity = "token"
  max_grad_norm: float | None = None

  def __post_init__(self):
    _check_choice("kind", self.kind, WEIGHT_NAMES)
    _check_choice("feature_map", self.feature_map, ("identity", "polynomial"))
    _check_choice("bias", self.bias, ("l2", "dot"))
    _check_choice("granularity", self.granularity, ("token", "chunk"))
    for name in ("window", "chunk_size", "ns_steps", "degree"):
      value = getattr(self, name)
      integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
      least = 0 if name == "ns_steps" else 1
      if not integer or value < least:
        raise ValueError(f"MemoryConfig.{name}={value!r}; expected an integer ≥ {least}.")
      object.__setattr__(self, name, int(value))  # a NumPy integer from a sweep becomes a plain (hashable) int
    if self.feature_map == "polynomial" and not 1 <= self.degree <= 3:
      raise ValueError(f"MemoryConfig.degree={self.degree}; polynomial features support degree 1..3.")
    if self.max_grad_norm is not None and not (isinstance(self.max_grad_norm, (int, float))
                                               and self.max_grad_norm > 0):
      raise ValueError(f"MemoryConfig.max_grad_norm={self.max_grad_norm!r}; expected None or a number > 0.")
    if self.residual is None:
      object.__setattr__(self, "residual", self.kind != "linear")

  @property
  def weight_names(self) -> tuple[str, ...]:
    return WEIGHT_NAMES[self.kind]

  @property
  def num_coeffs(self) -> int:
    """Length of the φ coefficient vector a (a_0..a_p); 0 for the identity map."""
    return self.degree + 1 if self.feature_map == "polynomial" else 0
