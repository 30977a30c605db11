"""MAD benchmark (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"; athms/mad-lab):
task settings, data sets, difficulty sweeps and scoring.

Own code, written from EVALS_NOTES.md §1 (the generators are in :mod:`atlas_jax.evals.mad_tasks`; training and
the result tables in :mod:`atlas_jax.evals.mad_runner`):

* ``MadSetting``: one task setting (task, vocab_size, seq_len, num_train, num_test and the task's knobs);
* ``generate(setting)``: one ``numpy.random.default_rng(seed)`` (MAD's seed 12345) shared by the splits — all
  train instances first, then the test instances continue the same stream; the recall tasks score only the
  answer positions at test time (train targets are the shifted inputs); a leakage check warns when more than
  0.1 % of the distinct test inputs also occur in train (§1.1);
* ``settings(task, scale)``: "full" = the baseline plus every difficulty change, one knob at a time
  (11/14/11/13/11/6 settings, §1.2–§1.7); "reduced" = the baseline only, with a smaller train and test set;
* ``macro_accuracy`` (MAD's metric: torchmetrics ``MulticlassAccuracy(average="macro", ignore_index=-100)``),
  ``micro_accuracy``, and ``mad_score`` (per setting the best accuracy over the lr/wd runs, averaged over the
  task's settings, §1.8).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from atlas_jax.evals import mad_tasks
from atlas_jax.evals.mad_tasks import IGNORE

TASKS = ("in-context-recall", "noisy-in-context-recall", "fuzzy-in-context-recall", "selective-copying",
         "compression", "memorization")
DATA_SEED = 12345  # MAD's default seed: data of every setting is drawn from default_rng(12345)
LEAKAGE_LIMIT = 0.001  # warn above this fraction of test inputs found in train
REDUCED_TRAIN, REDUCED_TEST = 256, 64  # split sizes of the "reduced" scale (baseline train size if smaller)
SCALES = ("full", "reduced")


@dataclasses.dataclass(frozen=True)
class MadSetting:
  """One MAD task setting (the MADConfig task fields of athms/mad-lab).

  Attributes:
    task: one of TASKS.
    vocab_size: V, including special and noise tokens.
    seq_len: L (instances have length L − 1 for (noisy) in-context recall, L otherwise).
    num_train, num_test: instances per split.
    frac_noise, noise_vocab_size: noise slots (noisy in-context recall).
    num_tokens_to_copy: N (selective copying).
    k_motif_size, v_motif_size: largest key / value motif (fuzzy in-context recall).
    multi_query: score every repeated key's value (MAD uses the multi-query form).
    label: which difficulty knob this setting changes ("baseline" or e.g. "vocab_size=32"); not a task field.
  """

  task: str
  vocab_size: int
  seq_len: int
  num_train: int = 12_800
  num_test: int = 1_280
  frac_noise: float = 0.0
  noise_vocab_size: int = 0
  num_tokens_to_copy: int = 0
  k_motif_size: int = 1
  v_motif_size: int = 1
  multi_query: bool = True
  label: str = dataclasses.field(default="baseline", compare=False)

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"task={self.task!r}; expected one of {TASKS}.")
    for name in ("vocab_size", "seq_len", "num_train", "num_test"):
      if getattr(self, name) < 1:
        raise ValueError(f"MadSetting.{name}={getattr(self, name)}; expected a positive integer.")
    noisy = self.task in ("in-context-recall", "noisy-in-context-recall", "fuzzy-in-context-recall")
    if not noisy and (self.frac_noise or self.noise_vocab_size):
      raise ValueError(f"task={self.task!r} has no noise option; got frac_noise={self.frac_noise}, "
                       f"noise_vocab_size={self.noise_vocab_size}.")
    if self.task == "selective-copying" and self.num_tokens_to_copy < 1:
      raise ValueError(f"selective-copying needs num_tokens_to_copy ≥ 1; got {self.num_tokens_to_copy}.")

  @property
  def length(self) -> int:
    """Instance length T (inputs and targets): multi-query recall drops one position of ``seq_len``."""
    recall = self.task in ("in-context-recall", "noisy-in-context-recall")
    return self.seq_len - 1 if recall and self.multi_query else self.seq_len

  @property
  def answer_classes(self) -> int:
    """Number of distinct answer tokens (chance accuracy = 1 / answer_classes)."""
    if self.task in ("in-context-recall", "noisy-in-context-recall"):
      return len(mad_tasks.recall_vocab(self.vocab_size, self.noise_vocab_size, self.multi_query)["values"])
    if self.task == "fuzzy-in-context-recall":
      return len(mad_tasks.fuzzy_vocab(self.vocab_size, self.noise_vocab_size, self.multi_query)["values"])
    if self.task == "selective-copying":
      return self.vocab_size - 2
    if self.task == "compression":
      return self.vocab_size
    return (self.vocab_size - 1) // 2  # memorization: one value per key


# Baselines and one-knob-at-a-time difficulty changes of the MAD benchmark (EVALS_NOTES §1.2–§1.7).
_BASELINES = {
    "in-context-recall": dict(vocab_size=16, seq_len=128),
    "noisy-in-context-recall": dict(vocab_size=32, seq_len=128, noise_vocab_size=16, frac_noise=0.2),
    "fuzzy-in-context-recall": dict(vocab_size=16, seq_len=128, k_motif_size=3, v_motif_size=3),
    "selective-copying": dict(vocab_size=16, seq_len=256, num_tokens_to_copy=16),
    "compression": dict(vocab_size=16, seq_len=32),
    "memorization": dict(vocab_size=256, seq_len=32, num_train=256),
}
_TRAIN_SWEEP = (6400, 3200, 1600, 800)
_CHANGES = {
    "in-context-recall": dict(vocab_size=(32, 64, 128), seq_len=(256, 512, 1024), num_train=_TRAIN_SWEEP),
    "noisy-in-context-recall": dict(vocab_size=(48, 80, 144), seq_len=(256, 512, 1024), num_train=_TRAIN_SWEEP,
                                    frac_noise=(0.4, 0.6, 0.8)),
    "fuzzy-in-context-recall": dict(vocab_size=(32, 64, 128), seq_len=(256, 512, 1024), num_train=_TRAIN_SWEEP),
    "selective-copying": dict(vocab_size=(32, 64, 128), seq_len=(512, 1024), num_train=_TRAIN_SWEEP,
                              num_tokens_to_copy=(32, 64, 96)),
    "compression": dict(vocab_size=(32, 64, 128), seq_len=(64, 128, 256), num_train=_TRAIN_SWEEP),
    "memorization": dict(vocab_size=(512, 1024, 2048, 4096, 8192)),
}


def settings(task: str, scale: str = "full") -> list[MadSetting]:
  """The settings of `task`: "full" = baseline + each difficulty change; "reduced" = the baseline, small splits."""
  if task not in TASKS:
    raise ValueError(f"task={task!r}; expected one of {TASKS}.")
  if scale not in SCALES:
    raise ValueError(f"scale={scale!r}; expected one of {SCALES}.")
  baseline = MadSetting(task=task, **_BASELINES[task])
  if scale == "reduced":
    return [dataclasses.replace(baseline, num_train=min(baseline.num_train, REDUCED_TRAIN), num_test=REDUCED_TEST)]
  out = [baseline]
  for knob, values in _CHANGES[task].items():
    out += [dataclasses.replace(baseline, **{knob: v}, label=f"{knob}={v}") for v in values]
  return out


class MadData(NamedTuple):
  """Both splits of one setting: inputs and targets [N, T] int32 (targets −100 where not scored)."""

  train_inputs: np.ndarray
  train_targets: np.ndarray
  test_inputs: np.ndarray
  test_targets: np.ndarray
  leakage: float  # fraction of distinct test inputs that also occur in train


def _instances(setting: MadSetting, rng: np.random.Generator, count: int, is_training: bool, state: dict):
  s = setting
  if s.task in ("in-context-recall", "noisy-in-context-recall"):
    make = lambda: mad_tasks.in_context_recall(
        rng, vocab_size=s.vocab_size, seq_len=s.seq_len, is_training=is_training, multi_query=s.multi_query,
        noise_vocab_size=s.noise_vocab_size, frac_noise=s.frac_noise)
  elif s.task == "fuzzy-in-context-recall":
    make = lambda: mad_tasks.fuzzy_in_context_recall(
        rng, vocab_size=s.vocab_size, seq_len=s.seq_len, is_training=is_training, k_motif_size=s.k_motif_size,
        v_motif_size=s.v_motif_size, multi_query=s.multi_query, noise_vocab_size=s.noise_vocab_size,
        frac_noise=s.frac_noise)
  elif s.task == "selective-copying":
    make = lambda: mad_tasks.selective_copying(rng, state["insert_rng"], vocab_size=s.vocab_size, seq_len=s.seq_len,
                                               num_tokens_to_copy=s.num_tokens_to_copy)
  elif s.task == "compression":
    make = lambda: mad_tasks.compression(rng, vocab_size=s.vocab_size, seq_len=s.seq_len)
  else:
    make = lambda: mad_tasks.memorization(rng, state["kv_map"], vocab_size=s.vocab_size, seq_len=s.seq_len)
  pairs = [make() for _ in range(count)]
  return (np.stack([p[0] for p in pairs]).astype(np.int32), np.stack([p[1] for p in pairs]).astype(np.int32))


def leakage_fraction(train_inputs: np.ndarray, test_inputs: np.ndarray) -> float:
  """Fraction of the distinct test input rows that also occur as a train input row."""
  train = {row.tobytes() for row in np.ascontiguousarray(train_inputs)}
  test = {row.tobytes() for row in np.ascontiguousarray(test_inputs)}
  return len(test & train) / max(len(test), 1)


def generate(setting: MadSetting, seed: int = DATA_SEED) -> MadData:
  """Train then test instances of `setting` from one shared ``default_rng(seed)`` stream (EVALS_NOTES §1.1)."""
  rng = np.random.default_rng(seed)
  state = {}
  if setting.task == "memorization":
    state["kv_map"] = mad_tasks.memorization_map(setting.vocab_size, seed)
  if setting.task == "selective-copying":
    state["insert_rng"] = np.random.RandomState(seed)  # the reference's seeded global RNG, shared by both splits
  train = _instances(setting, rng, setting.num_train, True, state)
  test = _instances(setting, rng, setting.num_test, False, state)
  leak = leakage_fraction(train[0], test[0])
  if leak > LEAKAGE_LIMIT:
    warnings.warn(f"MAD {setting.task} ({setting.label}): {leak:.2%} of test inputs also occur in train "
                  f"(limit {LEAKAGE_LIMIT:.1%}).", stacklevel=2)
  return MadData(train[0], train[1], test[0], test[1], leak)


def _valid(predictions, targets) -> tuple[np.ndarray, np.ndarray]:
  p, t = np.asarray(predictions), np.asarray(targets)
  if p.shape != t.shape:
    raise ValueError(f"predictions {p.shape} and targets {t.shape} must have the same shape (class ids).")
  keep = t != IGNORE
  if not keep.any():
    raise ValueError("targets hold no scored position (all are -100).")
  return p[keep].astype(np.int64), t[keep].astype(np.int64)


def micro_accuracy(predictions, targets) -> float:
  """Fraction of scored positions (targets ≠ −100) where the predicted class equals the target."""
  p, t = _valid(predictions, targets)
  return float(np.mean(p == t))


def macro_accuracy(predictions, targets) -> float:
  """Mean per-class recall over scored positions, as torchmetrics ``MulticlassAccuracy(average="macro")``.

  Classes are those that occur as a target or a prediction at a scored position (classes with no true
  positive, false positive or false negative are left out); a class that is only ever predicted has recall 0.
  """
  p, t = _valid(predictions, targets)
  size = int(max(p.max(), t.max())) + 1
  hits = np.bincount(t[p == t], minlength=size)
  support = np.bincount(t, minlength=size)
  active = (support + np.bincount(p, minlength=size)) > 0
  recall = np.where(support > 0, hits / np.maximum(support, 1), 0.0)
  return float(recall[active].mean())


def mad_score(accuracies: Sequence[Sequence[float]]) -> float:
  """MAD score of one task: accuracies[setting][run] → mean over settings of the best run (EVALS_NOTES §1.8)."""
  if not accuracies or any(len(runs) == 0 for runs in accuracies):
    raise ValueError(f"accuracies must hold at least one run per setting; got {accuracies!r}.")
  return float(np.mean([max(runs) for runs in accuracies]))
