"""Paper setting 1.3b (PAPER_NOTES.md, Table 7): 18 blocks × 2048, 100B tokens; data, batch and schedule in
``common.paper_config``.

    python -m experiments.main --config=experiments/configs/paper_1.3b.py:atlas --workdir=/shared/runs/atlas_1.3b \
        --config.data.path='/shared/fineweb_edu/*.npy' --config.data.tokenizer=sentencepiece \
        --config.data.tokenizer_path=/path/to/32k.model

Expected: the paper's ATLAS reaches Wiki perplexity 14.97 (Table 2). Step time: not measured yet (no accelerator has run it); estimate it with
``python -m atlas_jax.training.aot --size=1.3b`` (compiled FLOPs per step) before a long run.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.paper_config("1.3b", arg)
