"""lm-evaluation-harness CLI with the "atlas-jax" model registered (EVALS_NOTES.md §4.1).

    python -m experiments.lm_eval_main --model atlas-jax --model_args workdir=/tmp/atlas_demo \
        --tasks lambada_openai,piqa --output_path results/
    python -m experiments.lm_eval_main --model atlas-jax --model_args preset=atlas,size=tiny,chunk_size=128 \
        --tasks my_task --include_path tests/evals/lm_eval_tasks

Everything after the program name is lm-eval's own command line (``lm-eval --help``); model_args are those of
``atlas_jax.evals.lm_eval_adapter.AtlasJaxLM`` (workdir, step, preset, size, seed, tokenizer, tokenizer_path,
chunk_size, max_gen_toks and ModelConfig overrides). Without the network, set HF_DATASETS_OFFLINE=1 and
HF_HUB_OFFLINE=1 and use local tasks (hub-backed built-in tasks need their datasets in the local cache).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
  """Run lm-eval's CLI on `argv` (default: this process's arguments) with atlas-jax registered."""
  import atlas_jax.evals.lm_eval_adapter  # noqa: F401  (registers "atlas-jax")
  from lm_eval.__main__ import cli_evaluate

  if argv is not None:
    sys.argv = [sys.argv[0]] + list(argv)
  cli_evaluate()


if __name__ == "__main__":
  main()
