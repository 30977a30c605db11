"""Paper setting 760m (PAPER_NOTES.md, Table 7): 24 blocks × 1536, 30B tokens; data, batch and schedule in
``common.paper_config``.

    python -m experiments.main --config=experiments/configs/paper_760m.py:atlas --workdir=/shared/runs/atlas_760m \
        --config.data.path='/shared/fineweb_edu/*.npy' --config.data.tokenizer=sentencepiece \
        --config.data.tokenizer_path=/path/to/32k.model

Expected: the paper's ATLAS reaches Wiki perplexity 18.92 (Table 2). Step time: not measured yet (no accelerator has run it); estimate it with
``python -m atlas_jax.training.aot --size=760m`` (compiled FLOPs per step) before a long run.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.paper_config("760m", arg)
