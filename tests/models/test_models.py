"""Every preset at tiny size: builds, trains a little, and decodes exactly like the full forward pass."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from atlas_jax.config import ModelConfig
from atlas_jax.model import AtlasLM
from atlas_jax.presets import PRESETS, count_params, get_preset
from atlas_jax.sampling import generate, sample_logits
from tests.helpers import perturbed


def _tokens(batch=2, length=20, vocab=256, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, vocab)


@pytest.mark.parametrize("name", PRESETS)
def test_prefill_then_decode_equals_full_forward(name):
  """Pieces of 1, 0, 17 (more than the window of 16 and two chunks of 8, from a position known only at run time),
  3 and then single tokens, into a cache of exactly T = 26 positions; gates, norms and scales perturbed off their
  constant initial values."""
  model = perturbed(AtlasLM(get_preset(name, "tiny"), rngs=nnx.Rngs(0)), 1)
  tokens = _tokens(length=26)
  full, none_cache = model(tokens)
  assert full.shape == (2, 26, 256) and full.dtype == jnp.float32 and none_cache is None
  cache = model.init_cache(2, 26)
  step = nnx.jit(lambda model, tokens, cache: model(tokens, cache))
  pieces, begin = [], 0
  for size in (1, 0, 17, 3) + (1,) * 5:
    logits, cache = step(model, tokens[:, begin:begin + size], cache)
    pieces.append(logits)
    begin += size
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name, max_length, finite_steps", [("transformer++", 8, 8), ("swa", 8, 8), ("swa", 16, 40),
                                                        ("dot", 8, 8), ("titans", 8, 40)])
def test_decoding_past_the_cache_is_nan_not_silently_wrong(name, max_length, finite_steps):
  """Global attention's cache, a sliding window's ring shorter than the window (16 here) and a kernel memory's
  key cache hold max_length positions: later ones come out NaN. A ring as long as the window, and a finite
  memory, decode without bound."""
  model = AtlasLM(get_preset(name, "tiny"), rngs=nnx.Rngs(0))
  tokens = _tokens(batch=1, length=40)
  step = nnx.jit(lambda model, tokens, cache: model(tokens, cache))
  cache = model.init_cache(1, max_length)
  finite = []
  for t in range(40):
    logits, cache = step(model, tokens[:, t:t + 1], cache)
    finite.append(bool(jnp.isfinite(logits).all()))
  assert finite == [t < finite_steps for t in range(40)]
  if name == "transformer++":  # one piece longer than the cache: its first max_length positions are still exact
    logits, _ = step(model, tokens[:, :12], model.init_cache(1, max_length))
    np.testing.assert_allclose(logits[:, :max_length], model(tokens[:, :12])[0][:, :max_length], atol=2e-4,
                               rtol=2e-4)
    assert not jnp.isfinite(logits[:, max_length:]).any()


@pytest.mark.parametrize("name", PRESETS)
def test_a_few_steps_lower_the_loss(name):
  """Memorise one fixed batch of a repeating pattern: the loss must fall within 8 AdamW steps."""
  model = AtlasLM(get_preset(name, "tiny"), rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  pattern = jnp.tile(jnp.arange(7), 5)[None, :33]
  tokens = jnp.concatenate([pattern, (pattern * 3 + 1) % 256])

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      logits, _ = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(8)]
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses


def test_scanned_layers_equal_unrolled_layers():
  base = get_preset("atlas", "tiny")
  unrolled = AtlasLM(base, rngs=nnx.Rngs(0))
  scanned = AtlasLM(base.replace(scan_layers=True), rngs=nnx.Rngs(1))
  # Copy the unrolled parameters into the scanned model, stacking layer i at index i.
  u_state = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
  s_state = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
  layers = [u_state["layers"][i] for i in range(base.num_layers)]
  s_state["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
  for key in u_state:
    if key != "layers":
      s_state[key] = u_state[key]
  nnx.update(scanned, s_state)
  tokens = _tokens()
  np.testing.assert_allclose(scanned(tokens)[0], unrolled(tokens)[0], atol=1e-5, rtol=1e-5)
  # Decoding through the scanned stack uses stacked caches.
  cache = scanned.init_cache(2, 24)
  logits, _ = scanned(tokens, cache)
  np.testing.assert_allclose(logits, unrolled(tokens)[0], atol=1e-4, rtol=1e-4)


def test_remat_and_bfloat16_policy():
  config = get_preset("titans", "tiny", remat="full", dtype="bfloat16")
  model = AtlasLM(config, rngs=nnx.Rngs(0))
  tokens = _tokens()
  logits, _ = model(tokens)
  assert logits.dtype == jnp.float32
  # The same parameters in float32: bf16 activations move logits of size ~4 by about one bf16 step (0.04 here).
  reference, _ = AtlasLM(config.replace(dtype="float32"), rngs=nnx.Rngs(0))(tokens)
  np.testing.assert_allclose(logits, reference, atol=0.08, rtol=0)
  params = nnx.state(model, nnx.Param)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  grads = nnx.grad(lambda m: jnp.mean(m(tokens)[0]))(model)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def test_out_of_range_tokens_are_an_error():
  model = AtlasLM(get_preset("delta", "tiny"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\)"):
    model(jnp.array([[1, 2, 256]]))
  # Traced ids cannot raise: they embed as NaN, so the logits show them (a negative id must not wrap around).
  forward = nnx.jit(lambda m, t: m(t)[0])
  assert np.all(np.isfinite(forward(model, jnp.array([[1, 2, 255]]))))
  for bad in (-1, 256):
    assert not np.all(np.isfinite(forward(model, jnp.array([[1, 2, bad]])))), bad


def test_parameters_carry_logical_axes():
  model = AtlasLM(get_preset("atlas", "tiny", scan_layers=True), rngs=nnx.Rngs(0))
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
  assert all(isinstance(v, jax.sharding.PartitionSpec) for v in flat.values())
  embed = [v for k, v in flat.items() if "embed" in k and "layers" not in k][0]
  assert tuple(embed) == ("vocab", "embed")
  assert all(tuple(v)[0] == "layers" for k, v in flat.items() if "layers" in k)


def test_paper_size_parameter_counts_are_near_their_names():
  for size, target in (("170m", 170e6), ("340m", 340e6), ("760m", 760e6), ("1.3b", 1.3e9)):
    count = count_params(get_preset("atlas", size))
    assert 0.7 * target < count < 1.35 * target, (size, count)


def test_sampling_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  draw = lambda **kw: np.array([int(sample_logits(logits, k, **kw)[0]) for k in keys])
  assert set(draw(temperature=0.0)) == {0}
  assert set(draw(top_k=2)) <= {0, 1}
  assert set(draw(top_p=0.7)) <= {0, 1}  # 0.5 + 0.3 reaches 0.7
  assert set(draw(top_p=1e-9)) == {0}  # the most likely token is always kept
  assert len(set(draw())) >= 3
  for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(temperature=1e-45), dict(top_p=0.0),
              dict(top_p=1.5), dict(top_k=-1), dict(top_k=2.5), dict(top_k=True)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      sample_logits(logits, keys[0], **bad)


def test_sampling_distributions_are_the_filtered_softmax():
  """Frequencies of 20,000 draws against the exact distributions (4σ ≈ 0.014 at p = 0.5)."""
  p = np.array([0.5, 0.3, 0.15, 0.05])
  logits = jnp.log(jnp.asarray(p))[None]
  keys = jax.random.split(jax.random.PRNGKey(1), 20_000)
  sharpened = p**2 / np.sum(p**2)  # temperature 0.5: softmax(2 log p)
  for kwargs, want in ((dict(temperature=0.5), sharpened),
                       (dict(top_k=2), np.array([0.5, 0.3, 0, 0]) / 0.8),
                       (dict(top_p=0.85), np.array([0.5, 0.3, 0.15, 0]) / 0.95),  # mass before 0.05's is 0.95
                       (dict(temperature=0.5, top_k=3), np.append(sharpened[:3] / sharpened[:3].sum(), 0))):
    draws = jax.vmap(lambda k, kw=kwargs: sample_logits(logits, k, **kw)[0])(keys)
    np.testing.assert_allclose(np.bincount(np.asarray(draws), minlength=4) / len(keys), want, atol=0.014,
                               err_msg=str(kwargs))


@pytest.mark.parametrize("preset, overrides", [("atlas_mag", {}), ("atlas_mag", {"scan_layers": True, "remat": "full"}),
                                               ("titans", {"memory_implementation": "pallas"}), ("swa", {}),
                                               ("dot", {})],
                         ids=["unrolled", "scanned", "pallas", "swa", "kernel-memory"])
def test_generate_greedy_matches_argmax_of_full_forward(preset, overrides, caplog):
  """Also with scanned, rematerialised layers, as every paper-size preset has them, with the memory pinned to the
  Pallas kernels (interpreted on CPU), which decode on the xla path, and with a kernel memory's growing cache.
  13 + 7 tokens: decoding wraps the sliding window's ring of 16 and crosses a memory chunk boundary."""
  model = AtlasLM(get_preset(preset, "tiny", **overrides), rngs=nnx.Rngs(0))
  prompt = _tokens(length=13)
  out = generate(model, prompt, 7, jax.random.PRNGKey(0), temperature=0.0)
  assert out.shape == (2, 20)
  logits, _ = model(out[:, :-1])
  np.testing.assert_array_equal(jnp.argmax(logits[:, 12:], -1), out[:, 13:])
  if preset == "swa":  # a second call of the same shapes compiles nothing
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
      generate(model, prompt, 7, jax.random.PRNGKey(1), temperature=0.0)
    assert not [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="unknown block type"):
    ModelConfig(blocks=("memory", "lstm"))
  with pytest.raises(ValueError, match="unknown ModelConfig keys"):
    ModelConfig.from_dict({"widht": 3})
  with pytest.raises(ValueError, match="scan_layers=True"):
    ModelConfig(blocks=("memory", "swa"), scan_layers=True)
  with pytest.raises(ValueError, match="unknown preset"):
    get_preset("atlantis")
  with pytest.raises(ValueError, match="swa_window=0"):
    get_preset("swa", "tiny", swa_window=0)
  for bad, match in ((dict(num_heads=0), "num_heads=0"), (dict(memory_heads=0), "memory_heads=0"),
                     (dict(conv_width=0), "conv_width=0"), (dict(eta_max=-1.0), "eta_max=-1.0"),
                     (dict(width=60, num_heads=4, memory_heads=4, memory_head_dim=15), "must be even"),
                     (dict(kernel_normalized=True), "has none")):
    with pytest.raises(ValueError, match=match):
      get_preset("atlas_mag", "tiny", **bad)
  # The kernel memory's restrictions are refused when the config is built, not at the first call.
  dot = get_preset("dot", "tiny")
  with pytest.raises(ValueError, match="no momentum or Muon"):
    dot.replace(memory=dataclasses.replace(dot.memory, momentum=True))
  with pytest.raises(ValueError, match="the exponential kernel is that block's feature map"):
    dot.replace(memory=dataclasses.replace(dot.memory, feature_map="polynomial"))
  assert ModelConfig.from_dict(get_preset("atlas").to_dict()) == get_preset("atlas")


def test_blocks_built_outside_a_model_check_their_own_settings():
  """Block and MemoryLayer take any ModelConfig, whose own checks cover only the block types it lists."""
  from atlas_jax.blocks import Block
  from atlas_jax.memory_layer import MemoryLayer
  atlas = get_preset("atlas", "tiny")
  delta = get_preset("delta", "tiny")
  polynomial = delta.replace(memory=dataclasses.replace(delta.memory, feature_map="polynomial"))
  with pytest.raises(ValueError, match="feature_map='polynomial' with a kernel_memory block"):
    Block(polynomial, "kernel_memory", rngs=nnx.Rngs(0))  # φ had been ignored silently
  with pytest.raises(ValueError, match="no momentum or Muon"):
    MemoryLayer(atlas, rngs=nnx.Rngs(0), kernel=True)
  with pytest.raises(ValueError, match="MAG gates attention"):
    Block(atlas.replace(memory_heads=2), "mag", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown block type 'lstm'"):
    Block(atlas, "lstm", rngs=nnx.Rngs(0))
  layer = MemoryLayer(delta, rngs=nnx.Rngs(0))
  x = jnp.zeros((2, 3, layer.config.width))
  with pytest.raises(ValueError, match=r"init_cache\(batch=2, …\) or a cache it returned; got batch 3"):
    layer(x, layer.init_cache(3, 8))
  block = Block(delta, "memory", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="got tuple"):  # a block's cache nested once more by mistake
    block(x, (block.init_cache(2, 8), None))


def test_bad_token_shapes_and_prompts_are_clear():
  model = AtlasLM(get_preset("delta", "tiny"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"tokens must be integer ids of shape \[batch, length\]; got shape \(5,\)"):
    model(jnp.arange(5))
  with pytest.raises(ValueError, match="dtype float32"):
    model(jnp.ones((1, 5)))
  out = generate(model, [[1, 2, 3]], 2, jax.random.PRNGKey(0), top_k=10**6)  # a list prompt; top_k ≥ vocab
  assert out.shape == (1, 5)
  out = generate(model, [[1, 2, 3]], 2, jax.random.PRNGKey(0), temperature=jnp.float32(0.5))  # a JAX scalar
  assert out.shape == (1, 5)
  for bad, match in ((dict(max_new_tokens=-1), "max_new_tokens=-1"), (dict(max_new_tokens=2.0), "max_new_tokens=2.0"),
                     (dict(top_k=2.5), "top_k=2.5")):
    with pytest.raises(ValueError, match=match):
      generate(model, [[1, 2, 3]], key=jax.random.PRNGKey(0), **{"max_new_tokens": 2, **bad})


def test_tied_embeddings_start_with_unit_logits():
  """Tied, the head is the embedding: its rows start at N(0, 1/D), so the first loss is near log(vocab)."""
  for width in (64, 256):
    config = get_preset("delta", "tiny", tie_embeddings=True, width=width, memory_heads=4,
                        memory_head_dim=width // 4)
    model = AtlasLM(config, rngs=nnx.Rngs(0))
    logits, _ = model(_tokens())
    assert 0.5 < float(jnp.std(logits)) < 2.0, (width, float(jnp.std(logits)))
