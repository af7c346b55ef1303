"""DDP on CPU (gloo, 2 processes) computes the same gradients as one process on the same global batch.

BatchNorm is frozen (``freeze_batchnorm``) here: CPU DDP has no SyncBatchNorm, so with BatchNorm in training
mode each process would normalise with its own batch statistics (on CUDA the trainer converts to
SyncBatchNorm). Everything else -- loss normalisation by the global number of negatives, gradient
averaging, sharded embedding with all_gather -- is the training code itself.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tscm_ros.data.mining import TrainingTuple
from tscm_ros.data.tuples import TupleDataset, collate_tuples
from tscm_ros.models import build_model
from tscm_ros.training.config import load_config
from tscm_ros.training.train import Runtime, batch_loss, embed_images, set_train_mode

SMALL_INPUT = (32, 32)
NEGATIVE_COUNTS = (1, 3, 2, 2)  # unequal per rank: rank 0 gets tuples 0, 2 (3 negatives), rank 1 gets 5


def make_batch(corridor: Path, rank: int | None):
    """The global batch (rank None) or the share DistributedSampler would give ``rank`` of 2."""
    refs = sorted((corridor / "ref").glob("*.jpg"))
    queries = sorted((corridor / "query").glob("*.jpg"))
    tuples = [
        TrainingTuple(q, q + 1, np.arange(60 + 3 * q, 60 + 3 * q + n)) for q, n in enumerate(NEGATIVE_COUNTS)
    ]
    dataset = TupleDataset(tuples, refs, queries, SMALL_INPUT)
    indices = range(len(tuples)) if rank is None else range(rank, len(tuples), 2)
    return collate_tuples([dataset[i] for i in indices]), refs[:7]


def gradients(model, batch, runtime: Runtime) -> dict[str, torch.Tensor]:
    """Gradients of one training step in float64: the untrained network's descriptors are nearly parallel,
    so the triplet terms are differences of almost equal distances and float32 gradients change by ~0.5 %
    with the convolution kernels' summation order (batches of 2 vs 4; seen on an AMD Zen 5 CPU). In float64
    that noise is ~1e-14, and the comparison tests the training code, not the CPU."""
    config = load_config(None, train_data="x.mat", val_data="y.mat", freeze_batchnorm=True)
    set_train_mode(model, config.freeze_batchnorm)
    loss, _ = batch_loss(model, dataclasses.replace(batch, images=batch.images.double()), config, runtime)
    loss.backward()
    net = model.module if hasattr(model, "module") else model
    return {name: p.grad.detach().clone() for name, p in net.named_parameters()}


def small_model(dtype: torch.dtype) -> torch.nn.Module:
    return build_model("student", seed=0, input_size=SMALL_INPUT).to(dtype)


def ddp_worker(rank: int, port: int, corridor: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        runtime = Runtime(rank, 2)
        batch, images = make_batch(Path(corridor), rank)
        grads = gradients(
            torch.nn.parallel.DistributedDataParallel(small_model(torch.float64)), batch, runtime
        )
        model = torch.nn.parallel.DistributedDataParallel(small_model(torch.float32))  # as trained/evaluated
        embeddings = torch.from_numpy(
            embed_images(model, images, runtime, batch_size=2, num_workers=0, amp=False)
        )
        if rank == 0:
            torch.save({"grads": grads, "embeddings": embeddings}, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_matches_single_process(corridor_dir, tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(ddp_worker, args=(free_port(), str(corridor_dir), str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)

    batch, images = make_batch(corridor_dir, None)
    grads = gradients(small_model(torch.float64), batch, Runtime())
    model = small_model(torch.float32)
    embeddings = torch.from_numpy(
        embed_images(model, images, Runtime(), batch_size=2, num_workers=0, amp=False)
    )
    assert torch.allclose(distributed["embeddings"], embeddings, atol=1e-6)
    assert grads.keys() == distributed["grads"].keys()
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    worst = max(
        float((distributed["grads"][name] - grad).norm() / (grad.norm() + 1e-20))
        for name, grad in grads.items()
    )
    print(f"largest relative gradient difference over parameter tensors: {worst:.2e}")
    assert worst < 1e-9  # float64 summation order differs (batches of 2 vs 4); a wrong scale gives > 0.1
