"""Paper setting 1.3b (PAPER_NOTES.md, Table 7): 18 blocks × 2048, 100B tokens; data, batch and schedule in
``common.paper_config``.

    python -m experiments.main --config=experiments/configs/paper_1.3b.py:atlas --workdir=/shared/runs/atlas_1.3b \
        --config.data.path='/shared/fineweb_edu/*.npy' --config.data.tokenizer=sentencepiece \
        --config.data.tokenizer_path=/path/to/32k.model

The paper reports Wiki perplexity 14.97 for ATLAS at this size (Table 2),
with Muon at every position (``common.paper_config``).
Step time: not measured yet (no accelerator has run it); estimate it with ``python -m atlas_jax.training.aot
--preset=atlas --size=1.3b --batch=16 --grad_accum=8`` (memory plan of one paper step on 8 fake CPU devices, and a
lower bound on its FLOPs: XLA counts each scan body once) before a long run. ``common.paper_config`` says where the
run differs from the paper (Muon's granularity) and how to keep 0.5M tokens per step on several processes.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.paper_config("1.3b", arg)
