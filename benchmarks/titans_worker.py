"""Times titans-pytorch's NeuralMemory in its own interpreter (no JAX here); prints one JSON line.

Run by benchmarks/peers_cpu.py with the interpreter of a virtual environment that has torch and titans-pytorch.
"""

import argparse
from importlib.metadata import version
import json
import resource
import statistics
import time

import torch
from titans_pytorch import NeuralMemory


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--length", type=int, required=True)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--chunk", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=0, help="titans-pytorch batch_size (0: None, its default)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--mode", choices=["fwd", "bwd"], required=True)
  args = p.parse_args()
  torch.manual_seed(0)
  memory = NeuralMemory(dim=args.dim, heads=args.heads, dim_head=args.dim // args.heads, chunk_size=args.chunk,
                        batch_size=args.batch_size or None, momentum=True)
  x = torch.randn(args.batch, args.length, args.dim)

  def run():
    if args.mode == "fwd":
      with torch.no_grad():
        return memory(x)[0]
    xg = x.clone().requires_grad_(True)
    out, _ = memory(xg)
    out.square().sum().backward()
    return xg.grad

  finite = bool(torch.isfinite(run()).all())  # warm-up; reported, since its divergence is not ours to fix
  warm_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  print(json.dumps({"seconds": seconds, "tokens_per_s": args.batch * args.length / seconds,
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "warm_rss_mib": warm_rss,
                    "finite": finite, "torch": torch.__version__, "titans_pytorch": version("titans-pytorch"),
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
