"""Training speed of the TSCM teacher and the student (distillation) on this machine.

Measures, per network and input size, one optimiser step of the real training code
(:func:`tscm_ros.training.train.batch_loss` + backward + fused Adam) on ``--tuples`` tuples of
1 query + 1 positive + ``--negatives`` negatives (published: 8 tuples x 10 negatives = 96 images), and the
no-grad embedding throughput used for the hard-negative cache and validation. The student step includes
the frozen teacher's forward pass (cross-metric loss), as in distillation.

Seconds per epoch are extrapolated for a stated epoch (default Pitts30k: 7416 training queries; the cache
re-embeds 10000 + 7416 training images -- every epoch for the teacher, once for the student, whose cache
comes from the frozen teacher -- and validation embeds 10000 + 7608 images).

Reduced sizes (e.g. 32) rebuild the networks with ``DescriptorNet.input_size`` set to that size: the
NetVLAD sample counts follow the token count, so this is a smaller variant of the architecture (not
loadable as a 224 model), useful for tests; the published networks run at 224 only.

    python benchmarks/train_speed.py                       # 224 and 32, published tuple shape
    python benchmarks/train_speed.py --sizes 32 --steps 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from tscm_ros.data.tuples import TupleBatch
from tscm_ros.models import build_model
from tscm_ros.models.base import DescriptorNet
from tscm_ros.training.config import load_config
from tscm_ros.training.train import Runtime, batch_loss


def random_batch(tuples: int, negatives: int, size: int) -> TupleBatch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((tuples * (2 + negatives), 3, size, size), generator=generator)
    return TupleBatch(images, torch.full((tuples,), negatives, dtype=torch.int64), torch.arange(tuples))


def time_steps(arch: str, size: int, args: argparse.Namespace) -> dict:
    DescriptorNet.input_size = (size, size)
    config = load_config(None, arch=arch, train_data="x", val_data="y", teacher="t", device="cpu")
    model = build_model(arch, seed=0).train()
    teacher = build_model("teacher", seed=1).eval().requires_grad_(False) if arch == "student" else None
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    batch = random_batch(args.tuples, args.negatives, size)
    steps = args.steps if size != 224 else args.steps_224
    durations = []
    for step in range(1 + steps):  # the first step allocates optimiser state and kernels: not timed
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = batch_loss(model, batch, config, Runtime(), teacher)
        loss.backward()
        optimizer.step()
        if step:
            durations.append(time.perf_counter() - start)
    step_seconds = sum(durations) / len(durations)
    embed_net = teacher if teacher is not None else model
    embed_net.eval()
    images = torch.randn((args.embed_batch, 3, size, size))
    with torch.no_grad():
        embed_net(images)
        start = time.perf_counter()
        for _ in range(args.embed_repeats):
            embed_net(images)
        embed_seconds = (time.perf_counter() - start) / (args.embed_repeats * args.embed_batch)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(images)
        own_embed_seconds = (time.perf_counter() - start) / args.embed_batch
    tuples_per_second = args.tuples / step_seconds
    cache_images = args.epoch_database + args.epoch_queries
    cache_seconds = cache_images * embed_seconds if arch == "teacher" else 0.0
    val_seconds = (args.val_database + args.val_queries) * own_embed_seconds
    epoch_seconds = args.epoch_queries / tuples_per_second + cache_seconds + val_seconds
    return {
        "arch": arch,
        "size": size,
        "images_per_step": args.tuples * (2 + args.negatives),
        "step_s": step_seconds,
        "tuples_per_s": tuples_per_second,
        "embed_images_per_s": 1.0 / own_embed_seconds,
        "epoch_s": epoch_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="teacher,student")
    parser.add_argument("--sizes", default="224,32")
    parser.add_argument("--tuples", type=int, default=1, help="tuples per timed step")
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed steps at reduced sizes")
    parser.add_argument("--steps-224", type=int, default=1, help="timed steps at 224")
    parser.add_argument("--embed-batch", type=int, default=16)
    parser.add_argument("--embed-repeats", type=int, default=2)
    parser.add_argument("--epoch-queries", type=int, default=7416)
    parser.add_argument("--epoch-database", type=int, default=10000)
    parser.add_argument("--val-queries", type=int, default=7608)
    parser.add_argument("--val-database", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        time_steps(arch, int(size), args) for size in args.sizes.split(",") for arch in args.archs.split(",")
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}; "
        f"step = {args.tuples} tuple(s) x (1 query + 1 positive + {args.negatives} negatives), fused Adam; "
        f"epoch = {args.epoch_queries} tuples + cache ({args.epoch_database}+{args.epoch_queries} images, "
        f"teacher only) + val ({args.val_database}+{args.val_queries} images)\n"
    )
    print("| network | input | images/step | s/step | tuples/s | embed images/s | s/epoch (h) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['size']}x{r['size']} | {r['images_per_step']} | {r['step_s']:.2f} | "
            f"{r['tuples_per_s']:.3f} | {r['embed_images_per_s']:.1f} | "
            f"{r['epoch_s']:.0f} ({r['epoch_s'] / 3600:.1f} h) |"
        )


if __name__ == "__main__":
    main()
