"""TSCM training: the teacher with the triplet loss, the student distilled from the frozen teacher.

Read top to bottom, as :func:`train` calls them: :func:`set_up` (distributed, seeds, data, networks,
optimiser, resume), then per epoch :func:`train_one_epoch` (:func:`mine` hard negatives from an embedding
cache, :func:`optimise` over the mined tuples), :func:`validate` on the val split, :func:`record_epoch`
and :func:`checkpoint`. Published protocol: see :mod:`tscm_ros.training.config`.

Run directory (``config.out_dir``)::

    config.yaml                 the resolved configuration
    last/model.json, model.safetensors, training_state.pt     after every epoch (resume from here)
    best/model.json, model.safetensors                         best validation score so far
    history.jsonl               one JSON line per epoch (losses, val metrics, lr)
    tensorboard/                SummaryWriter scalars (train/*, val/*, lr)

``training_state.pt`` holds only tensors and plain containers (optimiser, scheduler, grad scaler, epoch, best
score, miner negative cache, RNG states as tensors) and is read with ``torch.load(weights_only=True)``.
Multi-GPU: ``torchrun --nproc_per_node=N $(which tscm_train) ...`` (DDP, one process per GPU, rank 0 writes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from tscm_ros.data.dataset import RetrievalDataset
from tscm_ros.data.mining import HardNegativeMiner
from tscm_ros.data.tuples import ImageListDataset, TupleBatch, TupleDataset, collate_tuples, split_embeddings
from tscm_ros.losses import cross_metric_loss, triplet_loss
from tscm_ros.model_io import CONFIG_FILE, WEIGHTS_FILE, load_model, read_model_config, save_model
from tscm_ros.models import build_model
from tscm_ros.training.config import TrainConfig, save_config
from tscm_ros.training.evaluate import retrieval_metrics

LOGGER = logging.getLogger("tscm_ros.training")
STATE_FILE = "training_state.pt"
STATE_FORMAT = "tscm_ros.training_state"
STATE_VERSION = 1


class ResumeError(RuntimeError):
    """The run directory cannot be resumed (missing, torn or incompatible checkpoint)."""


# ----------------------------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    """Process placement: rank/world size (1 without torchrun) and the device of this process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device_name: str) -> Runtime:
    """Join the process group under torchrun (NCCL on CUDA, gloo on CPU) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = device_name.lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device_name!r} but CUDA is not available; use device=cpu or auto")
    if name.startswith("cuda") and world_size > 1:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return Runtime(rank, world_size, device)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python/numpy/torch; deterministic kernels (warn-only: some CUDA backward ops have none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# ----------------------------------------------------------------------------------------------- data
def load_split(config: TrainConfig, split: str) -> RetrievalDataset:
    """The train or val split named by the configuration."""
    if config.dataset == "pittsburgh":
        from tscm_ros.data.pittsburgh import load_pittsburgh

        mat = config.train_data if split == "train" else config.val_data
        return load_pittsburgh(mat, config.data_root or None)
    from tscm_ros.data.csv_dataset import load_csv_dataset

    path = config.train_data if split == "train" or not config.val_data else config.val_data
    return load_csv_dataset(path, split)


def limit_queries(dataset: RetrievalDataset, count: int) -> RetrievalDataset:
    """The first ``count`` queries (0 = all), for quick validation."""
    if count <= 0 or count >= len(dataset.queries):
        return dataset
    return RetrievalDataset(
        name=dataset.name,
        database=dataset.database,
        queries=dataset.queries[:count],
        positives={k: v[:count] for k, v in dataset.positives.items()},
        database_utm=dataset.database_utm,
        query_utm=None if dataset.query_utm is None else dataset.query_utm[:count],
        extra=dataset.extra,
        query_database_index=(
            None if dataset.query_database_index is None else dataset.query_database_index[:count]
        ),
    )


@torch.no_grad()
def embed_images(
    model: nn.Module, paths: list, runtime: Runtime, *, batch_size: int, num_workers: int, amp: bool
) -> np.ndarray:
    """L2-normalised descriptors (N, D) float32 of ``paths``; each rank embeds a shard, all get everything."""
    net = model.module if isinstance(model, DistributedDataParallel) else model
    was_training = net.training
    net.eval()
    shard = math.ceil(len(paths) / runtime.world_size) if paths else 0
    mine = paths[runtime.rank * shard : (runtime.rank + 1) * shard]
    loader = DataLoader(
        ImageListDataset(mine, net.input_size),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda",
    )
    chunks = []
    for images in loader:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and runtime.device.type == "cuda"):
            chunks.append(net(images.to(runtime.device, non_blocking=True)).float())
    local = torch.cat(chunks) if chunks else torch.zeros((0, net.descriptor_dim), device=runtime.device)
    if runtime.distributed:
        padded = local.new_zeros((shard, net.descriptor_dim))
        padded[: len(local)] = local
        gathered = [torch.empty_like(padded) for _ in range(runtime.world_size)]
        dist.all_gather(gathered, padded)
        local = torch.cat(gathered)[: len(paths)]
    net.train(was_training)
    return local.cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------- loss
def set_train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def global_negative_count(counts: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Number of negatives in the global batch (all ranks)."""
    total = counts.sum().to(runtime.device, torch.float32)
    if runtime.distributed:
        dist.all_reduce(total)
    return total


def batch_loss(
    model: nn.Module,
    batch: TupleBatch,
    config: TrainConfig,
    runtime: Runtime,
    teacher: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one (local share of a global) batch, scaled so that DDP's gradient averaging gives the
    gradient of the published loss over the global batch (sums over triplets / global #negatives)."""
    images = batch.images.to(runtime.device, non_blocking=True)
    counts = batch.negative_counts
    use_amp = config.amp and runtime.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        embeddings = model(images).float()
    anchor, positive, negatives, mask = split_embeddings(embeddings, counts)
    share = (
        counts.sum().to(runtime.device, torch.float32)
        * runtime.world_size
        / global_negative_count(counts, runtime)
    )
    loss = triplet_loss(anchor, positive, negatives, config.margin, mask) * share
    parts = {"triplet": float(loss.detach()) / runtime.world_size}
    if teacher is not None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            teacher_triplet = split_embeddings(teacher(images).float(), counts)[:3]
        cross = cross_metric_loss(
            (anchor, positive, negatives), teacher_triplet, config.margin, config.cross_metric_form, mask
        )
        cross = cross * (share if config.cross_metric_form == "published" else runtime.world_size)
        parts["cross_metric"] = float(cross.detach()) / runtime.world_size
        loss = loss + cross
    parts["loss"] = float(loss.detach()) / runtime.world_size
    return loss, parts


# ----------------------------------------------------------------------------------------------- state
def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    python = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((python[0], tuple(python[1:]), None if math.isnan(gauss) else gauss))
    pos, has_gauss = state["numpy_extra"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0]))
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, model: nn.Module, state: dict, provenance: str) -> None:
    """Model in our format + training state; the state records the model fingerprint (detects torn saves)."""
    save_model(model, directory, provenance=provenance)
    state = {**state, "model_fingerprint": read_model_config(directory)["fingerprint"]}
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / STATE_FILE)


def copy_model(source: Path, target: Path) -> None:
    """Copy a saved model folder (hard links when possible: ``save_model`` replaces files, never rewrites)."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        try:
            os.link(source / name, staging / name)
        except OSError:
            shutil.copy2(source / name, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def load_checkpoint(directory: Path, arch: str) -> tuple[nn.Module, dict]:
    """(model on CPU, training state) from a run's ``last/`` folder."""
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise ResumeError(f"cannot resume: {state_path} not found (is {directory.parent} a tscm_train run?)")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ResumeError(f"{state_path}: not a {STATE_FORMAT} v{STATE_VERSION} file")
    if state["arch"] != arch:
        raise ResumeError(f"{state_path} is a {state['arch']} run; cannot resume it as {arch}")
    loaded = load_model(directory, "cpu")
    if loaded.fingerprint != state["model_fingerprint"]:
        raise ResumeError(
            f"{directory}: model and training state come from different saves (interrupted write?)"
        )
    return loaded.module, state


# ----------------------------------------------------------------------------------------------- set-up
@dataclass
class TrainingRun:
    """Everything one run holds between its steps (built by :func:`set_up`)."""

    config: TrainConfig
    runtime: Runtime
    out_dir: Path
    train_set: RetrievalDataset
    val_set: RetrievalDataset
    miner: HardNegativeMiner
    model: nn.Module  # DDP-wrapped when distributed: the module the loss runs
    net: nn.Module  # the bare network (embeddings, checkpoints)
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: dict
    writer: object | None = None
    frozen_cache: dict[str, np.ndarray] = field(default_factory=dict)  # a frozen teacher's cache: embed once

    @property
    def mining_net(self) -> nn.Module:
        """The network whose embeddings choose the hard negatives."""
        use_teacher = self.teacher is not None and self.config.mining_model == "teacher"
        return self.teacher if use_teacher else self.net


def load_data(config: TrainConfig) -> tuple[RetrievalDataset, RetrievalDataset, HardNegativeMiner]:
    """Train split, (limited) val split and the miner over the train split."""
    train_set = load_split(config, "train")
    val_set = limit_queries(load_split(config, "val"), config.max_val_queries)
    miner = HardNegativeMiner.from_dataset(
        train_set,
        num_negatives=config.num_negatives,
        negative_pool=config.negative_pool,
        margin=config.margin,
    )
    if len(miner.trainable_queries) == 0:
        raise ValueError(f"{train_set.name}: no training query has a positive within the positive radius")
    return train_set, val_set, miner


def build_networks(
    config: TrainConfig, runtime: Runtime, teacher: nn.Module | None
) -> tuple[nn.Module, nn.Module | None]:
    """The trained network (seeded init) and, for a student, the frozen teacher on the device."""
    model = build_model(config.arch, seed=config.seed, pretrained=config.pretrained, **config.model_options)
    if config.arch != "student":
        return model, None
    if teacher is None:
        teacher = load_model(config.teacher, runtime.device).module
    teacher = teacher.to(runtime.device)
    if teacher.arch != "teacher":
        raise ValueError(f"teacher={config.teacher} holds a {teacher.arch!r} network, not a teacher")
    teacher.eval().requires_grad_(False)
    if tuple(teacher.input_size) != tuple(model.input_size):
        raise ValueError(f"teacher input {teacher.input_size} differs from student input {model.input_size}")
    return model, teacher


def build_optimisation(config: TrainConfig, model: nn.Module, runtime: Runtime):
    """Adam, its exponential schedule and the AMP grad scaler (after the move to the device, so that the
    optimiser state lives there too)."""
    optimizer = torch.optim.Adam(  # fused: one kernel over all parameters (CPU and CUDA), same maths
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and runtime.device.type == "cuda")
    return optimizer, scheduler, scaler


def wrap_distributed(config: TrainConfig, model: nn.Module, runtime: Runtime) -> nn.Module:
    """DDP (with SyncBatchNorm on CUDA when configured) when distributed, else ``model`` itself."""
    if config.batch_size % runtime.world_size:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {runtime.world_size} processes"
        )
    if not runtime.distributed:
        return model
    if config.sync_batchnorm and runtime.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
    )


def set_up(config: TrainConfig, resume_from: str | Path | None, teacher: nn.Module | None) -> TrainingRun:
    """Distributed runtime, seeds, run folder, data, networks, optimiser and (when resuming) their state."""
    config.validate()
    runtime = setup_runtime(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed, config.deterministic)
    out_dir = Path(config.out_dir)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    train_set, val_set, miner = load_data(config)
    model, teacher = build_networks(config, runtime, teacher)
    state = None
    if resume_from is not None:
        saved, state = load_checkpoint(Path(resume_from) / "last", config.arch)
        model.load_state_dict(saved.state_dict())
    model.to(runtime.device)
    optimizer, scheduler, scaler = build_optimisation(config, model, runtime)
    progress = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "epochs_without_improvement": 0, "step": 0}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        miner.load_state_dict(state["miner"])
        progress = {k: state[k] for k in progress}
        set_rng_state(state["rng"])
        LOGGER.info(
            "resumed %s after epoch %d (best %.4f)", resume_from, progress["epoch"], progress["best_score"]
        )
    ddp_model = wrap_distributed(config, model, runtime)
    net = ddp_model.module if runtime.distributed else ddp_model
    writer = None
    if runtime.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))
    return TrainingRun(
        config, runtime, out_dir, train_set, val_set, miner, ddp_model, net, teacher,
        optimizer, scheduler, scaler, progress, writer,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- mine
def mine(run: TrainingRun, rng: np.random.Generator, chunk_queries: np.ndarray) -> list:
    """Embedding cache (database + this chunk's queries; a frozen teacher's once) -> hard-negative tuples."""
    config, mining_net, train_set = run.config, run.mining_net, run.train_set
    frozen = mining_net is run.teacher
    if frozen and run.frozen_cache:
        db_emb, q_emb = run.frozen_cache["db"], run.frozen_cache["q"]
    else:
        embed = dict(batch_size=config.cache_batch_size, num_workers=config.num_workers, amp=config.amp)
        wanted = run.miner.trainable_queries if frozen else np.sort(chunk_queries)
        db_emb = embed_images(mining_net, train_set.database, run.runtime, **embed)
        q_emb = np.zeros((len(train_set.queries), db_emb.shape[1]), np.float32)
        q_emb[wanted] = embed_images(mining_net, [train_set.queries[i] for i in wanted], run.runtime, **embed)
        if frozen:
            run.frozen_cache.update(db=db_emb, q=q_emb)
    return run.miner.mine(db_emb, q_emb, rng, chunk_queries)


# ----------------------------------------------------------------------------------------------- one epoch
def optimise(run: TrainingRun, tuples: list, epoch: int, chunk_index: int) -> tuple[list[dict], int]:
    """One pass over the mined tuples; returns the per-batch loss parts and the number of tuples seen."""
    config, runtime = run.config, run.runtime
    dataset = TupleDataset(tuples, run.train_set.database, run.train_set.queries, run.net.input_size)
    sampler = DistributedSampler(
        dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=config.seed
    )
    sampler.set_epoch(epoch * 100_000 + chunk_index)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size // runtime.world_size,
        sampler=sampler,
        collate_fn=collate_tuples,
        num_workers=config.num_workers,
        pin_memory=runtime.device.type == "cuda",
    )
    set_train_mode(run.model, config.freeze_batchnorm)
    parts_seen: list[dict[str, float]] = []
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not (config.progress and runtime.is_main))
    for batch in bar:
        run.optimizer.zero_grad(set_to_none=True)
        loss, parts = batch_loss(run.model, batch, config, runtime, run.teacher)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.progress["step"] += 1
        parts_seen.append(parts)
        seen += batch.batch_size * runtime.world_size
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
        if run.writer is not None:
            for name, value in parts.items():
                run.writer.add_scalar(f"train/{name}", value, run.progress["step"])
    return parts_seen, seen


def train_one_epoch(run: TrainingRun, epoch: int) -> tuple[list[dict], int]:
    """Mine and optimise chunk by chunk over this epoch's queries, then step the learning rate."""
    config = run.config
    rng = np.random.default_rng([config.seed, epoch])
    queries = rng.permutation(run.miner.trainable_queries)
    if config.max_queries_per_epoch:
        queries = queries[: config.max_queries_per_epoch]
    chunk = config.cache_refresh_queries or len(queries)
    epoch_parts: list[dict[str, float]] = []
    epoch_tuples = 0
    for chunk_index, start in enumerate(range(0, len(queries), chunk)):
        tuples = mine(run, rng, queries[start : start + chunk])
        if not tuples:
            continue
        parts, seen = optimise(run, tuples, epoch, chunk_index)
        epoch_parts += parts
        epoch_tuples += seen
    run.scheduler.step()
    return epoch_parts, epoch_tuples


# ----------------------------------------------------------------------------------------------- validate
def validate(run: TrainingRun) -> dict[str, float]:
    """Recall@N and mAP of the current network on the val split."""
    config, val_set = run.config, run.val_set
    embed = dict(batch_size=config.eval_batch_size, num_workers=config.num_workers, amp=config.amp)
    val_db = embed_images(run.net, val_set.database, run.runtime, **embed)
    val_q = embed_images(run.net, val_set.queries, run.runtime, **embed)
    return retrieval_metrics(val_db, val_q, val_set, tuple(config.recall_ns))


def record_epoch(
    run: TrainingRun, epoch: int, metrics: dict, parts: list[dict], tuples: int
) -> tuple[dict, bool]:
    """Update best score / patience and return the epoch's history record and whether it improved."""
    progress = run.progress
    score = metrics[run.config.early_stop_metric]
    improved = score > progress["best_score"]
    if improved:
        progress.update(best_score=score, best_epoch=epoch + 1, epochs_without_improvement=0)
    else:
        progress["epochs_without_improvement"] += 1
    progress["epoch"] = epoch + 1
    record = {
        "epoch": epoch + 1,
        "lr": run.optimizer.param_groups[0]["lr"],
        "tuples": tuples,
        **{f"train/{k}": float(np.mean([p[k] for p in parts])) for k in (parts or [{}])[0]},
        **{f"val/{k}": v for k, v in metrics.items()},
    }
    return record, improved


# ----------------------------------------------------------------------------------------------- checkpoint
def checkpoint(run: TrainingRun, record: dict, improved: bool) -> None:
    """Rank 0: log the record (logger, tensorboard, history.jsonl), save ``last/`` and, if improved,
    ``best/``; then every rank waits for it."""
    config, epoch = run.config, record["epoch"]
    if run.runtime.is_main:
        LOGGER.info("epoch %d: %s", epoch, json.dumps(record))
        for name, value in record.items():
            if name.startswith(("train/", "val/")) or name == "lr":
                run.writer.add_scalar(name, value, epoch)
        run.writer.flush()
        with (run.out_dir / "history.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        score = record[f"val/{config.early_stop_metric}"]
        provenance = (
            f"tscm_train {config.arch}: epoch {epoch}, {run.train_set.name}, "
            f"val {config.early_stop_metric}={score:.4f}"
        )
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "arch": config.arch,
            **run.progress,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "miner": run.miner.state_dict(),
            "rng": rng_state(),
        }
        save_checkpoint(run.out_dir / "last", run.net, state, provenance)
        if improved:
            copy_model(run.out_dir / "last", run.out_dir / "best")
    if run.runtime.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------------- train
def train(
    config: TrainConfig, *, resume_from: str | Path | None = None, teacher: nn.Module | None = None
) -> dict:
    """Train ``config.arch``; returns a summary (best score/epoch, per-epoch history, output folder).

    ``resume_from``: a run folder to continue from its ``last/`` checkpoint. ``teacher``: an already loaded
    teacher network for distillation (instead of loading ``config.teacher``).
    """
    run = set_up(config, resume_from, teacher)
    history = []
    for epoch in range(run.progress["epoch"], config.epochs):
        parts, tuples = train_one_epoch(run, epoch)
        record, improved = record_epoch(run, epoch, validate(run), parts, tuples)
        history.append(record)
        checkpoint(run, record, improved)
        if config.patience and run.progress["epochs_without_improvement"] > config.patience:
            LOGGER.info(
                "no val improvement for %d epochs: early stop", run.progress["epochs_without_improvement"]
            )
            break
    if run.writer is not None:
        run.writer.close()
    return {
        "out_dir": str(run.out_dir),
        "epochs": run.progress["epoch"],
        "best_score": run.progress["best_score"],
        "best_epoch": run.progress["best_epoch"],
        "history": history,
    }
