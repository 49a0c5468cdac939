"""Training arguments split by concern, as the official M3 / LLaVA recipe does: :class:`ModelArguments`,
:class:`DataArguments` and :class:`TrainingArguments`, parsed together by one ``HfArgumentParser``
(:func:`argument_parser`) and joined into the flat :class:`TrainConfig` that :func:`m3.training.train` takes, presets
(:data:`PRESETS`) fill and ``train_summary.json`` records. Fields made with :func:`run_setting` are the run's
identity: ``--resume`` refuses a checkpoint written with other values (:data:`RUN_SETTINGS`).
"""

from __future__ import annotations

import copy
from dataclasses import Field, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from transformers import HfArgumentParser

from .data.granularity import DEFAULT_NUM_IMAGES
from .pooling import TOKEN_SELECTIONS, parse_scales

SCALE_SAMPLINGS = ("averaged", "random")
DATASETS = ("granularity", "frames")
RUN_IDENTITY = "run_identity"  # field metadata: the setting makes checkpoints part of one run


def run_setting(default: Any, **metadata: Any) -> Any:
    """A field that makes a checkpoint part of one run: ``--resume`` refuses a checkpoint written with another value."""
    return field(default=default, metadata={RUN_IDENTITY: True, **metadata})


@dataclass
class ModelArguments:
    """What model trains: a checkpoint or a tiny one from scratch, its scales and how a grid becomes s tokens."""

    _argument_group_name = "model"

    model: str | None = field(
        default=None, metadata={"help": "llava-hf checkpoint directory; unset: a tiny model from scratch"}
    )
    family: str = run_setting("llava", help="tiny model family: llava or llava_next")
    scales: str = run_setting("1,9,36,144,576", help="trained scales; '576' = SS baseline")
    token_selection: str = run_setting(
        "avg_pool",
        help="how a grid becomes s tokens: avg_pool (M3), spatial or sequential (paper Table 6)",
        choices=TOKEN_SELECTIONS,
    )
    train_vision_tower: bool = run_setting(True, help="train the vision tower too")
    conversation_template: str | None = run_setting(
        None,
        help="plain, vicuna_v1 or chat_template (m3.templates); default: the model's (its config's "
        "m3_conversation_template, else its chat template, else plain); saved in the trained model's config",
    )
    tiny_hidden_size: int = run_setting(128)
    tiny_vision_layers: int = run_setting(1)
    tiny_text_layers: int = run_setting(2)
    tiny_projector_hidden_act: str = run_setting(
        "linear", help="tiny projector activation ('linear': pooling commutes with it)"
    )
    tiny_vision_feature_layer: int = run_setting(
        0, help="tiny tower layer fed to the projector (0: patch + 2-D sin-cos position codes)"
    )

    def scale_list(self) -> list[int]:
        return sorted(parse_scales(self.scales))


@dataclass
class DataArguments:
    """What it trains and evaluates on: a LLaVA JSON file or a Hugging Face dataset, or a generated benchmark."""

    _argument_group_name = "data"

    data_path: str = field(
        default="runs/granularity/train.chat.json",
        metadata={"help": "LLaVA-format JSON, or a Hugging Face dataset (save_to_disk folder, *.parquet, hub id)"},
    )
    image_root: str | None = field(default=None, metadata={"help": "image folder (default: the JSON's folder)"})
    data_split: str | None = field(default=None, metadata={"help": "split of a Hugging Face dataset data_path"})
    data_config: str | None = field(default=None, metadata={"help": "hub configuration of a dataset data_path"})
    data_columns: str | None = field(
        default=None, metadata={"help": "column mapping of a dataset data_path (ROLE=COLUMN,...; see m3.data.hf)"}
    )
    skip_bad_images: bool = run_setting(False, help="drop unreadable images (counted)")
    eval_data_path: str | None = field(default="runs/granularity/validation.json", metadata={"help": "eval JSON"})
    eval_samples: int = field(default=300, metadata={"help": "records used by each periodic evaluation"})
    dataset: str = field(
        default="granularity",
        metadata={
            "help": "the generated benchmark --generate_data writes: granularity (m3.data.granularity) or frames "
            "(m3.data.frames: multi-image videos)",
            "choices": DATASETS,
        },
    )
    generate_data: bool = field(default=True, metadata={"help": "write the granularity benchmark if missing"})
    num_frames: int = field(default=4, metadata={"help": "frames per video of a generated frames benchmark"})
    train_images: int = run_setting(
        DEFAULT_NUM_IMAGES["train"],
        help="images (frames benchmark: videos) in a generated train split (4 questions each); a split already "
        "there of another size is refused",
    )
    eval_images: int = run_setting(
        DEFAULT_NUM_IMAGES["validation"],
        help="images (frames benchmark: videos) in a generated validation split (another size there is refused)",
    )


@dataclass
class TrainingArguments:
    """How it trains: the loss over the scales, the optimizer and schedule, precision, checkpoints and logging."""

    _argument_group_name = "training"

    output_dir: str = field(default="runs/tiny-m3", metadata={"help": "where checkpoints and the final model go"})
    scale_sampling: str = run_setting(
        "averaged",
        help="averaged: every step's loss is the mean over the scales (M3); random: one scale per optimizer "
        "step, drawn uniformly from a generator seeded by (seed, step) (paper Table 8)",
        choices=SCALE_SAMPLINGS,
    )
    mixed_scale_fraction: float = run_setting(
        0.0,
        help="multi-image rows whose images take different scales in a pass (drawn per row and step; over the "
        "passes every image still meets every scale once); 0: every image of a pass at one scale, as M3",
    )
    learning_rate: float = run_setting(1e-3)
    weight_decay: float = run_setting(0.0)
    warmup_ratio: float = run_setting(0.03)
    lr_scheduler: str = run_setting(
        "warmup_stable_decay",
        help="a transformers schedule: cosine, cosine_with_restarts (see lr_cycles), warmup_stable_decay "
        "(see lr_decay_ratio), linear, constant_with_warmup, ...",
    )
    lr_cycles: int = run_setting(1, help="cosine_with_restarts: cosine cycles, each restarting at the full rate")
    lr_decay_ratio: float = run_setting(0.2, help="warmup_stable_decay: share of the steps spent decaying at the end")
    num_epochs: float = run_setting(1.0)
    max_steps: int = run_setting(9000, help="optimizer steps; overrides num_epochs when > 0")
    batch_size: int = run_setting(8, help="per device")
    gradient_accumulation_steps: int = run_setting(1)
    max_length: int = run_setting(2048)
    max_grad_norm: float = run_setting(1.0)
    mixed_precision: str = run_setting("no", help="no, fp16 or bf16")
    gradient_checkpointing: bool = False
    seed: int = run_setting(0)
    logging_steps: int = 10
    save_steps: int = 1000
    eval_steps: int = 250
    save_total_limit: int = 2
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in output_dir"})
    overwrite: bool = field(
        default=False, metadata={"help": "start afresh in a used output_dir, deleting its checkpoints and model"}
    )
    stop_after_steps: int = field(default=-1, metadata={"help": "testing: save and stop as if killed"})
    num_threads: int = field(
        default=2, metadata={"help": "torch CPU threads; 0 leaves torch's default (tiny: 2 threads ran 1.6x faster "
        "than 1 on an idle 2-core machine; give 1 when another job shares the cores)"}
    )


@dataclass
class TrainConfig(TrainingArguments, DataArguments, ModelArguments):
    """Every training setting in one flat object (model, then data, then training fields), with the defaults of the
    ``tiny`` CPU preset (see ``PRESETS``): what presets, ``--config`` files and ``train_summary.json`` hold.

    The command line parses its three parts with one ``HfArgumentParser`` (:func:`argument_parser`), as the
    official M3 recipe does, and joins them with :meth:`from_arguments`."""

    @classmethod
    def from_arguments(cls, *parts: ModelArguments | DataArguments | TrainingArguments) -> TrainConfig:
        return cls(**{f.name: getattr(part, f.name) for part in parts for f in fields(part)})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
RUN_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get(RUN_IDENTITY))


class _ArgumentParser(HfArgumentParser):
    """HfArgumentParser that keeps :data:`RUN_IDENTITY` out of argparse (it passes field metadata on as options)."""

    @staticmethod
    def _parse_dataclass_field(parser, field_: Field) -> None:
        options = {key: value for key, value in field_.metadata.items() if key != RUN_IDENTITY}
        field_ = copy.copy(field_)
        field_.metadata = MappingProxyType(options)
        HfArgumentParser._parse_dataclass_field(parser, field_)


def argument_parser(**kwargs) -> HfArgumentParser:
    """One parser for :data:`ARGUMENT_CLASSES` (a help group each); ``parse_args_into_dataclasses`` returns the
    three parts first (join them with :meth:`TrainConfig.from_arguments`)."""
    return _ArgumentParser(ARGUMENT_CLASSES, **kwargs)


# The paper's recipe (the official github mu-cai/matryoshka-mm training scripts): 1 epoch of llava_v1_5_mix665k,
# global batch 128 (4 x 4 accum x 8 GPUs), lr 2e-5 (1e-5 for NeXT), no weight decay, warmup 3 %, cosine, bf16,
# max length 2048, grad checkpointing.
_PAPER = dict(
    max_steps=-1,
    lr_scheduler="cosine",
    num_threads=0,
    data_path="data/llava_v1_5_mix665k.json",
    image_root="data",
    eval_data_path=None,
    generate_data=False,
    train_vision_tower=False,
    weight_decay=0.0,
    warmup_ratio=0.03,
    num_epochs=1.0,
    batch_size=4,
    gradient_accumulation_steps=4,
    mixed_precision="bf16",
    gradient_checkpointing=True,
    save_steps=500,
    eval_steps=10**9,
    logging_steps=10,
    conversation_template="vicuna_v1",  # --version v1 of the official fine-tune
)
PRESETS: dict[str, dict] = {
    "tiny": {},
    # many frames, one budget: tiny-m3 fine-tuned on multi-image videos of 4 granularity frames (and their collages)
    "tiny-frames": dict(
        model="checkpoints/tiny-m3",
        dataset="frames",
        data_path="runs/frames/train.chat.json",
        eval_data_path="runs/frames/validation.json",
        output_dir="runs/tiny-m3-frames",
        train_images=2000,
        eval_images=100,
        eval_samples=100,
        learning_rate=5e-4,
        lr_scheduler="cosine",
        max_steps=240,  # under 30 min of one core (about 6 s of CPU a step)
        save_steps=120,
        eval_steps=120,
        max_length=4096,  # 4 frames at 576 tokens each, and the text
        mixed_scale_fraction=0.5,  # half the videos also see frames at different scales, as allocations make them
    ),
    "llava-1.5-7b": dict(
        _PAPER, model="checkpoints/llava-1.5-7b-hf", output_dir="runs/llava-1.5-7b-m3", learning_rate=2e-5
    ),
    "llava-next-7b": dict(
        _PAPER,
        model="checkpoints/llava-v1.6-vicuna-7b-hf",
        output_dir="runs/llava-next-7b-m3",
        learning_rate=1e-5,
        max_length=4096,
    ),  # an anyres image alone can need ~2,900 tokens
}
