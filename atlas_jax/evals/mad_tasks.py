"""Instance generators of the six MAD synthetic tasks (Poli et al. 2024, athms/mad-lab), in numpy.

Own code, written from the description in EVALS_NOTES.md §1.1–§1.7. Each generator returns one instance
``(inputs [T] int64, targets [T] int64)``; ignored target positions hold ``IGNORE = -100``. Dataset assembly
(one shared RNG, train then test, leakage check), the benchmark settings and the scorers live in
:mod:`atlas_jax.evals.mad`.

Vocabulary layouts (special tokens at the top, noise just below them, the rest split into a key and a value
half):

    in-context recall (multi-query)   keys [0, n/2) · values [n/2, n) · noise [n, n + noise),  n = V − noise
    fuzzy in-context recall (m.-q.)   keys [0, n/2) · values [n/2, n) · noise · pad V − 1,  n = V − 1 − noise
    selective copying                 content [0, V − 2) · blank V − 2 · copy V − 1
    compression                       content [0, V − 1) · compression token V − 1
    memorization                      keys [0, V'/2) · values [V'/2, V') · insert token V − 1,  V' = V − 1
(the single-query forms put a copy-prefix token at V − 1 and shift the rest down by one).

RNG stream. In-context recall, noisy recall, compression and memorization make the same generator calls, in
the same order, as the reference (``rng.integers(0, n)`` draws exactly what ``rng.choice(n)`` or
``rng.choice(arange(n))`` draws), so the same seed gives the same data. Two deliberate differences:
* fuzzy recall samples a uniform m-permutation motif directly instead of shuffling the list of all
  m-permutations per instance (same distribution, different stream; the reference's per-instance shuffle of up
  to 250 k tuples makes vocab 128 impractically slow);
* selective copying draws its blank insertion indices from a ``numpy.random.RandomState`` passed in by the
  caller, not from numpy's global RNG (the reference seeds the global RNG with the task seed before generating,
  so a ``RandomState(seed)`` shared by the train and test splits reproduces it without global state).
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # target id of positions that are not scored (and skipped by the loss)


def _shift(inputs: list[int], targets: list[int], is_training: bool) -> tuple[np.ndarray, np.ndarray]:
  """Train: next-token targets on every position; test: only the answer positions (EVALS_NOTES §1.1)."""
  x = np.asarray(inputs, dtype=np.int64)
  t = np.asarray(targets, dtype=np.int64)
  return (x[:-1], x[1:]) if is_training else (x[:-1], t[1:])


def recall_vocab(vocab_size: int, noise_vocab_size: int = 0, multi_query: bool = True) -> dict[str, np.ndarray]:
  """Token ranges of (noisy) in-context recall: {"keys", "values", "noise"} (and "copy_prefix" single-query)."""
  n = vocab_size - noise_vocab_size - (0 if multi_query else 1)
  if n < 2:
    raise ValueError(f"vocab_size={vocab_size} leaves {n} key/value tokens after noise_vocab_size="
                     f"{noise_vocab_size}{'' if multi_query else ' and the copy prefix'}; expected at least 2.")
  vocab = {"keys": np.arange(n // 2), "values": np.arange(n // 2, n), "noise": np.arange(n, n + noise_vocab_size)}
  if not multi_query:
    vocab["copy_prefix"] = np.asarray([vocab_size - 1])
  return vocab


def in_context_recall(rng: np.random.Generator, *, vocab_size: int, seq_len: int, is_training: bool,
                      multi_query: bool = True, noise_vocab_size: int = 0,
                      frac_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """One (noisy) in-context recall instance of length seq_len − 1 (EVALS_NOTES §1.2–§1.3).

  Key/value slots ``k v``; each key keeps the value it first drew for the whole sequence; a value is a (test)
  target when its key appeared before (multi-query). A slot is two noise tokens with probability
  ``frac_noise``, except one protected slot. A final probe repeats a key seen so far with its value.
  """
  if seq_len % 2 or seq_len < 4:
    raise ValueError(f"seq_len={seq_len}; in-context recall needs an even seq_len ≥ 4 (key/value pairs).")
  if not 0.0 <= frac_noise < 1.0:
    raise ValueError(f"frac_noise={frac_noise}; expected 0 ≤ frac_noise < 1.")
  if frac_noise > 0 and noise_vocab_size <= 0:
    raise ValueError(f"frac_noise={frac_noise} needs noise_vocab_size > 0; got {noise_vocab_size}.")
  vocab = recall_vocab(vocab_size, noise_vocab_size, multi_query)
  keys, values, noise = vocab["keys"], vocab["values"], vocab["noise"]
  num_slots = seq_len // 2
  protected = rng.integers(0, num_slots)  # this slot is never noise
  bound: dict[int, int] = {}  # key → its value in this sequence (insertion order = first appearance)
  inputs: list[int] = []
  targets: list[int] = []
  for slot in range(num_slots - 1):  # the last slot is the probe
    if frac_noise > 0 and slot != protected and rng.random() < frac_noise:
      inputs += [int(t) for t in noise[rng.integers(0, len(noise), size=2)]]
      targets += [IGNORE, IGNORE]
      continue
    key = int(keys[rng.integers(0, len(keys))])
    seen = key in bound
    if not seen:
      bound[key] = int(values[rng.integers(0, len(values))])
    inputs += [key, bound[key]]
    targets += [IGNORE, bound[key] if (seen and multi_query) else IGNORE]
  prefix = [] if multi_query else [vocab_size - 1]
  if bound:
    seen_keys = list(bound)
    probe = seen_keys[rng.integers(0, len(seen_keys))]
    probe_target = bound[probe]
  else:  # every body slot was noise (the reference fails here); the probe then has nothing to recall
    probe = int(keys[rng.integers(0, len(keys))])
    bound[probe] = int(values[rng.integers(0, len(values))])
    probe_target = IGNORE
  inputs += prefix + [probe, bound[probe]]
  targets += [IGNORE] * len(prefix) + [IGNORE, probe_target]
  return _shift(inputs, targets, is_training)


def fuzzy_vocab(vocab_size: int, noise_vocab_size: int = 0, multi_query: bool = True) -> dict[str, np.ndarray]:
  """Token ranges of fuzzy in-context recall: {"keys", "values", "noise", "pad"} (and "copy_prefix")."""
  specials = 1 if multi_query else 2
  n = vocab_size - specials - noise_vocab_size
  if n < 2:
    raise ValueError(f"vocab_size={vocab_size} leaves {n} key/value tokens; expected at least 2.")
  vocab = {"keys": np.arange(n // 2), "values": np.arange(n // 2, n), "noise": np.arange(n, n + noise_vocab_size),
           "pad": np.asarray([vocab_size - specials])}
  if not multi_query:
    vocab["copy_prefix"] = np.asarray([vocab_size - 1])
  return vocab


def _motif(rng: np.random.Generator, tokens: np.ndarray, size: int) -> tuple[int, ...]:
  """A uniform ordered m-permutation (no repeated token) of `tokens`."""
  return tuple(int(t) for t in rng.choice(tokens, size=size, replace=False))


def fuzzy_in_context_recall(rng: np.random.Generator, *, vocab_size: int, seq_len: int, is_training: bool,
                            k_motif_size: int = 3, v_motif_size: int = 3, multi_query: bool = True,
                            noise_vocab_size: int = 0, frac_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """One fuzzy in-context recall instance of length seq_len (EVALS_NOTES §1.4).

  Keys and values are motifs of 1..k (1..v) distinct adjacent tokens; test keys always have k tokens. A probe
  pair (k*, v*) sits at a random body position and is repeated at the end, left padding fills to seq_len + 1
  before the shift. As in the reference, the probe's body position is drawn from [0, L − 2·|k* v*|) while the
  body stops growing at L − |k* v*| − (k + v) tokens, so in a few percent of instances the probe never enters
  the body (unless k* was drawn there by chance) and its final value, still scored, cannot be recalled.
  """
  vocab = fuzzy_vocab(vocab_size, noise_vocab_size, multi_query)
  keys, values, noise = vocab["keys"], vocab["values"], vocab["noise"]
  if not (1 <= k_motif_size <= len(keys) and 1 <= v_motif_size <= len(values)):
    raise ValueError(f"k_motif_size={k_motif_size}, v_motif_size={v_motif_size}; expected 1..{len(keys)} and "
                     f"1..{len(values)} (distinct tokens per motif, vocab_size={vocab_size}).")
  if seq_len <= 2 * (k_motif_size + v_motif_size):
    raise ValueError(f"seq_len={seq_len} is too short for motifs of up to {k_motif_size}+{v_motif_size} tokens; "
                     f"expected seq_len > {2 * (k_motif_size + v_motif_size)}.")
  if not 0.0 <= frac_noise < 1.0 or (frac_noise > 0 and noise_vocab_size <= 0):
    raise ValueError(f"frac_noise={frac_noise}, noise_vocab_size={noise_vocab_size}; expected 0 ≤ frac_noise < 1 "
                     "and noise tokens when frac_noise > 0.")
  key_sizes = np.arange(1, k_motif_size + 1) if is_training else np.asarray([k_motif_size])
  value_sizes = np.arange(1, v_motif_size + 1)
  probe_k = _motif(rng, keys, int(key_sizes[rng.integers(0, len(key_sizes))]))
  probe_v = _motif(rng, values, int(value_sizes[rng.integers(0, len(value_sizes))]))
  probe_len = len(probe_k) + len(probe_v)
  probe_at = rng.integers(0, seq_len - 2 * probe_len)  # body position where the probe pair is inserted
  probe_added = False
  bound: dict[tuple[int, ...], tuple[int, ...]] = {}
  presented: set[tuple[int, ...]] = set()
  inputs: list[int] = []
  targets: list[int] = []
  while len(inputs) < seq_len - probe_len - (k_motif_size + v_motif_size):
    k_size = int(key_sizes[rng.integers(0, len(key_sizes))])
    v_size = int(value_sizes[rng.integers(0, len(value_sizes))])
    if len(inputs) >= probe_at and not probe_added:
      inputs += list(probe_k) + list(probe_v)
      targets += [IGNORE] * probe_len
      bound[probe_k] = probe_v
      presented.add(probe_k)
      probe_added = True
      continue
    if frac_noise > 0 and rng.random() < frac_noise:
      inputs += [int(t) for t in noise[rng.integers(0, len(noise), size=k_size + v_size)]]
      targets += [IGNORE] * (k_size + v_size)
      continue
    key = _motif(rng, keys, k_size)
    if key == probe_k:
      value, probe_added = probe_v, True
    elif key in bound:
      value = bound[key]
    else:
      value = bound[key] = _motif(rng, values, v_size)
    inputs += list(key) + list(value)
    answer = key in presented and multi_query
    targets += [IGNORE] * len(key) + (list(value) if answer else [IGNORE] * len(value))
    presented.add(key)
  prefix = [] if multi_query else [int(vocab["copy_prefix"][0])]
  inputs += prefix + list(probe_k) + list(probe_v)
  targets += [IGNORE] * (len(prefix) + len(probe_k)) + list(probe_v)
  pad = seq_len + 1 - len(inputs)
  inputs = [int(vocab["pad"][0])] * pad + inputs
  targets = [IGNORE] * pad + targets
  return _shift(inputs, targets, is_training)


def selective_copying(rng: np.random.Generator, insert_rng: np.random.RandomState, *, vocab_size: int,
                      seq_len: int, num_tokens_to_copy: int) -> tuple[np.ndarray, np.ndarray]:
  """One selective-copying instance of length seq_len (EVALS_NOTES §1.5); same targets for train and test.

  N content tokens with B = seq_len − 2N − 1 blanks inserted before content tokens (numpy ``insert`` at indices
  uniform in 0..N−1, drawn from `insert_rng`), then the copy token and N blanks; the targets are the N content
  tokens in order, at the N trailing blanks.
  """
  if vocab_size < 3:
    raise ValueError(f"vocab_size={vocab_size}; selective copying needs ≥ 3 (content, blank, copy tokens).")
  blanks = seq_len - 2 * num_tokens_to_copy - 1
  if num_tokens_to_copy < 1 or blanks < 0:
    raise ValueError(f"num_tokens_to_copy={num_tokens_to_copy}, seq_len={seq_len}; expected 1 ≤ N and "
                     "seq_len ≥ 2N + 1.")
  copy_token, blank = vocab_size - 1, vocab_size - 2
  content = rng.integers(0, vocab_size - 2, size=num_tokens_to_copy)
  where = insert_rng.randint(0, num_tokens_to_copy, blanks)
  body = np.insert(content, where, blank)
  inputs = np.concatenate([body, [copy_token], np.full(num_tokens_to_copy, blank)]).astype(np.int64)
  targets = np.concatenate([np.full(num_tokens_to_copy + blanks + 1, IGNORE), content]).astype(np.int64)
  return inputs, targets


def compression(rng: np.random.Generator, *, vocab_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """One compression instance (EVALS_NOTES §1.6): seq_len − 1 content tokens, the compression token; target = input."""
  if vocab_size < 2 or seq_len < 2:
    raise ValueError(f"vocab_size={vocab_size}, seq_len={seq_len}; expected both ≥ 2.")
  inputs = np.concatenate([rng.integers(0, vocab_size - 1, size=seq_len - 1), [vocab_size - 1]]).astype(np.int64)
  return inputs, inputs.copy()


def memorization_map(vocab_size: int, seed: int) -> dict[int, int]:
  """The fixed key → value map of memorization (EVALS_NOTES §1.7), built from ``default_rng(seed)``.

  V' = vocab_size − 1; keys [0, V'/2) and values [V'/2, V') are each shuffled, then paired by position
  (floor(V'/2) pairs).
  """
  usable = vocab_size - 1
  if usable < 2:
    raise ValueError(f"vocab_size={vocab_size}; memorization needs ≥ 3 tokens (keys, values, insert token).")
  rng = np.random.default_rng(seed)
  keys, values = list(range(usable // 2)), list(range(usable // 2, usable))
  rng.shuffle(keys)
  rng.shuffle(values)
  return dict(zip(keys, values))


def memorization(rng: np.random.Generator, kv_map: dict[int, int], *, vocab_size: int,
                 seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """One memorization instance of length seq_len: pairs ``key, insert`` with targets ``-100, value(key)``."""
  if seq_len % 2 or seq_len < 2:
    raise ValueError(f"seq_len={seq_len}; memorization needs an even seq_len ≥ 2 (key/insert pairs).")
  keys = list(kv_map)
  num_pairs = seq_len // 2
  rng.integers(0, num_pairs)  # the reference's protected-slot draw (only used with noise); kept for the stream
  drawn = [keys[rng.integers(0, len(keys))] for _ in range(num_pairs)]  # one draw per pair, as the reference
  insert = vocab_size - 1
  inputs = np.asarray([t for k in drawn for t in (k, insert)], dtype=np.int64)
  targets = np.asarray([t for k in drawn for t in (IGNORE, kv_map[k])], dtype=np.int64)
  return inputs, targets
