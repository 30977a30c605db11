"""Paper setting 760m (PAPER_NOTES.md, Table 7): 24 blocks × 1536, 30B tokens of 0.5M, 4K context.

    python -m experiments.main --config=experiments/configs/paper_760m.py:atlas --workdir=/shared/runs/atlas_760m \
        --config.data.source=tokens --config.data.path='/shared/fineweb_edu/*.npy' \
        --config.data.tokenizer=sentencepiece --config.data.tokenizer_path=/path/to/32k.model \
        --config.mesh.shape=-1,8,1

The argument is any preset name (atlas, titans, omeganet, atlas++, transformer++, ...). Data: FineWeb-Edu
tokenized to .npy shards with a 32K tokenizer (not shipped: prepare it offline). Batch: 128 × 4096 = 0.5M
tokens per step (per-process batch_size × grad_accum × processes = 128). Expected: the paper reports for the
760M/30B and 1.3B/100B ATLAS models Wiki perplexity 18.92 and 14.97; step time depends on the cluster (the
paper publishes none) — measure it with `benchmarks/` before a long run. Not yet run at this scale here.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  return common.paper_config("760m", arg)
