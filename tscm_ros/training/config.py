"""Training configuration: one flat dataclass, loaded from YAML, overridable with ``key=value`` strings.

Defaults are the published TSCM protocol (``options.py`` / ``trainer.py`` of nubot-nudt/TSCM): Adam lr 1e-5,
weight decay 1e-3, ExponentialLR 0.99 per epoch, 8 tuples per batch, 10 hard negatives from 1000 random
candidates, margin 0.1, 200 epochs, early stop after 10 epochs without a val R@1 gain, seed 1234.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ARCHES = ("teacher", "student")
DATASET_KINDS = ("pittsburgh", "csv")


class ConfigError(ValueError):
    """Invalid training configuration (unknown key, wrong type, inconsistent values)."""


@dataclass
class TrainConfig:
    """Every training setting. ``arch`` is set by ``tscm_train teacher|student``."""

    arch: Literal["teacher", "student"] = "teacher"
    # --- data: Pittsburgh .mat files (images under data_root/database, data_root/query) or one CSV
    dataset: Literal["pittsburgh", "csv"] = "pittsburgh"
    train_data: str = ""  # pittsburgh: .../structure/pitts30k_train.mat; csv: the CSV (split 'train')
    val_data: str = ""  # pittsburgh: pitts30k_val.mat; csv: empty = the train CSV (split 'val')
    data_root: str = ""  # pittsburgh image root; empty = parent of the folder holding the .mat
    # --- network
    pretrained: Literal["none", "imagenet"] = "imagenet"  # ResNet-50 trunk initialisation
    model_options: dict = field(default_factory=dict)  # extra build_model options
    teacher: str = ""  # student only: trained teacher model directory (our format) or published .pth.tar
    # --- losses
    margin: float = 0.1
    cross_metric_form: Literal["published", "paper"] = "published"
    # --- mining
    num_negatives: int = 10
    negative_pool: int = 1000
    mining_model: Literal["teacher", "student"] = "teacher"  # student runs: which net builds the cache
    cache_refresh_queries: int = 0  # re-embed the cache every N training queries; 0 = once per epoch
    max_queries_per_epoch: int = 0  # 0 = every trainable query (published)
    cache_batch_size: int = 128
    # --- optimisation
    batch_size: int = 8  # tuples per optimiser step, over all processes
    lr: float = 1e-5
    weight_decay: float = 1e-3
    lr_gamma: float = 0.99  # ExponentialLR, stepped once per epoch
    epochs: int = 200
    patience: int = 10  # early stop after this many epochs without val improvement; 0 = never
    early_stop_metric: str = "10m/R@1"  # published: val R@1 at 10 m
    freeze_batchnorm: bool = False  # BatchNorm in eval mode while training (published: False)
    sync_batchnorm: bool = True  # convert BatchNorm to SyncBatchNorm under multi-GPU DDP (CUDA only)
    # --- evaluation
    recall_ns: list = field(default_factory=lambda: [1, 5, 10, 20])
    max_val_queries: int = 0  # 0 = all
    eval_batch_size: int = 128
    # --- runtime
    seed: int = 1234
    deterministic: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    amp: bool = True  # float16 autocast + GradScaler, CUDA only
    num_workers: int = 4
    num_threads: int = 0  # CPU threads per process; 0 = torch default
    out_dir: str = "runs/tscm"
    progress: bool = True  # tqdm bars (rank 0)

    def validate(self) -> TrainConfig:
        """Check value ranges and cross-field rules; returns self."""
        _check_types(self)
        problems = []
        if self.arch not in ARCHES:
            problems.append(f"arch must be one of {ARCHES}, not {self.arch!r}")
        if self.dataset not in DATASET_KINDS:
            problems.append(f"dataset must be one of {DATASET_KINDS}, not {self.dataset!r}")
        if not self.train_data:
            problems.append("train_data is empty: set the training .mat file (pittsburgh) or CSV")
        if self.dataset == "pittsburgh" and not self.val_data:
            problems.append("val_data is empty: set the validation .mat file (e.g. pitts30k_val.mat)")
        if self.arch == "student" and not self.teacher:
            problems.append("student distillation needs 'teacher': the trained teacher model directory")
        for name in (
            "num_negatives",
            "negative_pool",
            "batch_size",
            "epochs",
            "cache_batch_size",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "cache_refresh_queries",
            "max_queries_per_epoch",
            "max_val_queries",
            "patience",
            "num_workers",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 < self.lr_gamma <= 1 or self.weight_decay < 0 or self.margin < 0:
            problems.append("need lr > 0, 0 < lr_gamma <= 1, weight_decay >= 0, margin >= 0")
        if not self.recall_ns or any(not isinstance(n, int) or n < 1 for n in self.recall_ns):
            problems.append(f"recall_ns must be a list of positive integers, got {self.recall_ns}")
        protocol, _, metric = self.early_stop_metric.partition("/")
        if protocol not in ("10m", "25m") or metric not in ["mAP", *(f"R@{n}" for n in self.recall_ns)]:
            problems.append(
                f"early_stop_metric must look like '10m/R@1', '25m/R@5' or '10m/mAP', "
                f"not {self.early_stop_metric!r}"
            )
        if problems:
            raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation (ints accepted for floats); raise ConfigError otherwise."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{name}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{name}: unsupported annotation {hint}")  # not used by TrainConfig
    kind = origin or hint
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kind is str and isinstance(value, Path):
        return str(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_types(config: TrainConfig) -> None:
    for name, hint in _field_types().items():
        setattr(config, name, _coerce(name, getattr(config, name), hint))


def config_from_dict(values: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """Build a config from a mapping; unknown keys are an error that lists the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    known = _field_types()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    config = TrainConfig()
    for name, value in values.items():
        setattr(config, name, _coerce(f"{source}: {name}", value, known[name]))
    return config


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), **fixed: Any
) -> TrainConfig:
    """YAML file (defaults if ``path`` is None) + ``key=value`` overrides (values read as YAML) + ``fixed``.

    Relative data/model paths in the YAML stay relative to the working directory, like command-line paths.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        values = {} if loaded is None else loaded
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        source = str(path)
    values = dict(values)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {error}") from error
    values.update(fixed)
    return config_from_dict(values, source=source).validate()


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
