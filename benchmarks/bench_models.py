"""Parameter counts, FLOPs and CPU latency of the TSCM networks (prints a table; not a test).

.venv/bin/python benchmarks/bench_models.py [--threads N] [--repeats R] [--batch B]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from tscm_ros.models import build_model


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 224, 224)
    rows = []
    for arch, options in (("student", {}), ("student", {"variance_head": True}), ("teacher", {})):
        model = build_model(arch, **options)
        # counted with autograd on: nn.MultiheadAttention's no-grad fast path is invisible to the counter
        # (CPU flash attention of the cross-attention blocks, 0.16 GFLOPs, is not counted either)
        with FlopCounterMode(display=False) as flops:
            model(x[:1])
        with torch.no_grad():
            model(x)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        label = arch + ("+variance" if options.get("variance_head") else "")
        rows.append((label, count(model), flops.get_total_flops() / 1e9, min(times) * 1e3 / args.batch))
    print(f"CPU, {args.threads} threads, batch {args.batch}, best of {args.repeats}")
    print(f"{'network':<18}{'params':>14}{'GFLOPs/img':>12}{'ms/img':>10}")
    for label, params, gflops, ms in rows:
        print(f"{label:<18}{params:>14,}{gflops:>12.2f}{ms:>10.1f}")


if __name__ == "__main__":
    main()
