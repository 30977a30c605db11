"""Paper setting 760m (PAPER_NOTES.md, Table 7): 24 blocks × 1536, 30B tokens; data, batch and schedule in
``common.paper_config``.

    python -m experiments.main --config=experiments/configs/paper_760m.py:atlas --workdir=/shared/runs/atlas_760m \
        --config.data.path='/shared/fineweb_edu/*.npy' --config.data.tokenizer=sentencepiece \
        --config.data.tokenizer_path=/path/to/32k.model

The paper reports Wiki perplexity 18.92 for ATLAS at this size (Table 2),
with Muon at every position (``common.paper_config``).
Step time: not measured yet (no accelerator has run it); estimate it with ``python -m atlas_jax.training.aot
--preset=atlas --size=760m --batch=16 --grad_accum=8`` (memory plan of one paper step on 8 fake CPU devices, and a
lower bound on its FLOPs: XLA counts each scan body once) before a long run. ``common.paper_config`` says where the
run differs from the paper (Muon's granularity) and how to keep 0.5M tokens per step on several processes.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.paper_config("760m", arg)
