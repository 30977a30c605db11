"""A seconds-long experiment for the training tests (synthetic data, a 2-layer ATLAS, checkpoints every step)."""

from experiments.configs import common


def get_config(arg=None):
  c = common.base_config()
  c.model.preset = arg or "atlas"
  c.model.size = "tiny"
  c.model.overrides.vocab_size = 264  # ≥ 257 bytes + separator; divisible by the test meshes
  c.model.overrides.width = 32
  c.model.overrides.num_heads = 2
  c.model.overrides.mlp_hidden = 64
  c.model.overrides.memory_heads = 2
  c.model.overrides.memory_head_dim = 16
  c.model.overrides.memory.chunk_size = 8
  c.data.source = "synthetic"
  c.data.seq_len = 16
  c.data.batch_size = 8
  c.data.val_fraction = 0.1
  c.train.steps = 6
  c.train.lr = 1e-2
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.eval_batches = 2
  c.train.checkpoint_every = 1
  c.train.keep_checkpoints = 10
  c.train.async_checkpoint = False
  c.train.sample_tokens = 0
  c.lock()
  return c
