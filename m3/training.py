"""M3 training on accelerate: one loop for CPU, DDP, DeepSpeed ZeRO-3 and FSDP.

The per-scale loop lives inside ``model.forward(..., m3_scales=...)``, so every backend sees one forward
and one backward per micro-batch; ``scale_sampling="random"`` (the paper's Table 8 ablation) trains one scale
per optimizer step instead, drawn by :func:`sampled_scale`. Checkpoints are ``accelerator.save_state``
directories written atomically; ``resume=True`` continues from the newest one and skips the batches it
already trained on, so a killed and resumed run ends with the same weights as an uninterrupted one.
The settings (:class:`TrainConfig`, :data:`PRESETS`) live in :mod:`m3.training_args`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, set_seed, str_to_bool
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from .data.frames import FramesConfig
from .data.frames import ensure_split as ensure_frames_split
from .data.granularity import VOCABULARY
from .data.granularity import ensure_split as ensure_granularity_split
from .data.hf import HFInstructionDataset, is_hf_location, load_hf
from .data.llava import LlavaDataset, M3Collator
from .evaluation import OVERALL, accuracy_table, evaluate_scales
from .files import dumps_json, read_json, writing
from .fingerprint import FINGERPRINT_NAME, file_sha256, model_fingerprint
from .loading import load_m3_config, load_m3_model, non_finite_parameters
from .pooling import check_scales, check_token_selection, parse_scales
from .processing import M3Processor
from .runs import check_output_dir, check_same_record, held_run_folder, setting_differences
from .tiny import IMAGE_SIZE, PATCH_SIZE, build_tiny_tokenizer, tiny_image_processor, tiny_model
from .training_args import (
    DATASETS,
    RUN_SETTINGS,
    SCALE_SAMPLINGS,
    TrainConfig,
)
from .training_args import PRESETS as PRESETS  # where scripts and users have imported it from

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
LOSS_WINDOW = 10  # random scale sampling: the progress bar shows each scale's mean over its last 10 draws
# what a finished run leaves in output_dir besides the tokenizer and image processor files
FINAL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "train_summary.json")
FINAL_FILES += (FINGERPRINT_NAME,)


class OutputDirInUseError(FileExistsError):
    """The output folder holds checkpoints or a model of an earlier run, and neither --resume nor --overwrite says
    what to do with them."""


class ResumeMismatchError(ValueError):
    """The newest checkpoint was written by a run with other data, batch size, scales, model or settings."""


class CheckpointChangedError(ValueError):
    """A checkpoint's files are not the ones its run saved (changed, missing or added since)."""


class LaunchError(ValueError):
    """The launcher started processes that accelerate does not run as asked: they would train copies side by side
    into one output_dir, or data-parallel where FSDP or DeepSpeed was asked for."""


class NonFiniteTrainingError(ValueError):
    """The loss or the weights stopped being finite; nothing non-finite is saved."""


def sampled_scale(scales: Sequence[int], seed: int, step: int) -> int:
    """The scale that optimizer step ``step`` (0-based) trains under random scale sampling.

    Uniform over ``scales``, from a generator seeded by ``(seed, step)`` alone: independent of the data order and
    of how many draws came before, so a resumed run (and every process of a distributed one) draws the same scale.
    """
    return int(scales[np.random.default_rng([seed, step]).integers(len(scales))])


def mixed_scale_passes(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    scales: Sequence[int],
    fraction: float,
    seed: int,
    step: int,
) -> list[int] | list[list[int]]:
    """The passes of one step's multi-scale loss when multi-image rows mix scales (``fraction`` of them).

    Pass k gives image j of the batch (row-major) ``scales[(k + offset_j) % len(scales)]``: a Latin square, so over
    the passes every image still meets every scale exactly once, as in M3. Single-image rows, and multi-image rows
    not drawn, keep offset 0 (every image of the pass at ``scales[k]``, the published M3 pass); a drawn row gives
    each of its images its own offset, so its prompts hold frames at different scales, as a budget allocation
    builds them. Drawn from a generator seeded by ``(seed, step)``: a resumed run mixes alike. Without any drawn
    row this returns ``scales`` itself."""
    per_row = ((input_ids == image_token_id) & attention_mask.bool()).sum(dim=1).tolist()
    rng = np.random.default_rng([seed, step, 1])
    offsets: list[int] = []
    for count in per_row:
        mixed = count > 1 and rng.random() < fraction
        offsets += rng.integers(len(scales), size=count).tolist() if mixed else [0] * count
    if not any(offsets):
        return list(scales)
    return [[int(scales[(k + offset) % len(scales)]) for offset in offsets] for k in range(len(scales))]


class ScaleLossMeter:
    """Each scale's mean loss over its last ``window`` updates: what the progress bar and the log show.

    With every scale in every step (averaged sampling) and ``window=1`` these are the step's own losses; with one
    random scale per step they are running means over the recent steps that drew each scale."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: dict[int, deque] = {}

    def update(self, per_scale_loss: dict[int, float]) -> None:
        for scale, loss in per_scale_loss.items():
            self.recent.setdefault(scale, deque(maxlen=self.window)).append(float(loss))

    def means(self) -> dict[int, float]:
        return {scale: sum(values) / len(values) for scale, values in sorted(self.recent.items())}


def build_model_and_processor(config: TrainConfig):
    """The checkpoint in ``config.model``, or a tiny from-scratch model with a tokenizer for the benchmark."""
    scales = config.scale_list()
    m3_settings = dict(
        m3_scales=scales,
        m3_default_scale=max(scales),
        m3_train_vision_tower=config.train_vision_tower,
        m3_token_selection=config.token_selection,
    )
    if config.conversation_template is not None:  # recorded in the trained model's config: asked as it was trained
        m3_settings["m3_conversation_template"] = config.conversation_template
    if config.model is not None:
        model = load_m3_model(config.model, **m3_settings)
        return model, M3Processor.from_pretrained(config.model, config=model.config)
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model(
        config.family,
        seed=config.seed,
        tokenizer=tokenizer,
        hidden_size=config.tiny_hidden_size,
        vision_layers=config.tiny_vision_layers,
        text_layers=config.tiny_text_layers,
        vision_feature_layer=config.tiny_vision_feature_layer,
        projector_hidden_act=config.tiny_projector_hidden_act,
        **m3_settings,
    )
    return model, M3Processor(tiny_image_processor(config.family), tokenizer, model.config)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """Parameters the optimizer updates. A frozen vision tower gets ``requires_grad=False`` so that DDP,
    ZeRO-3 and FSDP do not wait for gradients it never receives (its forward runs under no_grad); a
    trained one keeps only the layers that feed the selected feature layer (see :func:`unread_tower_modules`)."""
    tower = model.model.vision_tower
    tower.requires_grad_(model.config.m3_train_vision_tower)
    for module in unread_tower_modules(model):
        module.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def unread_tower_modules(model) -> list[torch.nn.Module]:
    """Vision-tower modules whose output LLaVA never reads: the encoder layers above the deepest
    ``vision_feature_layer`` (LLaVA-1.5 reads layer -2, so the last layer is unread) and the final norm
    (hidden states are taken before it). They can never get a gradient."""
    tower = model.model.vision_tower
    tower = getattr(tower, "vision_model", tower)
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    if layers is None:
        return []
    selected = model.config.vision_feature_layer
    selected = [selected] if isinstance(selected, int) else list(selected)
    num_states = len(layers) + 1  # hidden_states[0] is the embedding output
    deepest = max(index % num_states for index in selected)
    unread = list(layers[deepest:])
    if getattr(tower, "post_layernorm", None) is not None:
        unread.append(tower.post_layernorm)
    return unread


def ensure_generated_data(config: TrainConfig) -> None:
    """Write the generated benchmark ``config.dataset`` names (:func:`ensure_granularity_data` or
    :func:`ensure_frames_data`) where its splits are missing."""
    (ensure_frames_data if config.dataset == "frames" else ensure_granularity_data)(config)


def ensure_granularity_data(config: TrainConfig) -> None:
    """Write the granularity benchmark's splits the config names (train, validation) if they are missing; refuse
    splits of another generator version (see :func:`m3.data.granularity.ensure_split`), size or seed."""
    _ensure_splits(config, ensure_granularity_split, "num_images")


def ensure_frames_data(config: TrainConfig) -> None:
    """Write the frames benchmark's splits (``num_frames`` frames per video) the config names if they are missing;
    refuse splits of another generator version (see :func:`m3.data.frames.ensure_split`), size or seed."""
    frames = FramesConfig(num_frames=config.num_frames)
    _ensure_splits(config, partial(ensure_frames_split, config=frames), "num_videos")


def generated_splits(config: TrainConfig) -> list[tuple[str, str, str]]:
    """``(path, split, size option)`` of each split ``generate_data`` writes: train (unless ``data_path`` is a Hugging
    Face dataset) and validation (when ``eval_data_path`` is set)."""
    if not config.generate_data:
        return []
    hf_train = config.data_split is not None or is_hf_location(config.data_path)
    named = [(None if hf_train else config.data_path, "train", "train_images")]
    named.append((config.eval_data_path, "validation", "eval_images"))
    return [(path, split, option) for path, split, option in named if path is not None]


def _ensure_splits(config: TrainConfig, ensure_split, size_key: str) -> None:
    """``ensure_split(path, split, size, seed)`` for each of :func:`generated_splits`; a split already there of
    another size or seed (its meta's ``size_key`` and ``seed``) is refused: the run would train on other data than
    its ``--train_images`` / ``--eval_images`` say."""
    for path, split, option in generated_splits(config):
        size = getattr(config, option)
        ensure_split(path, split, size, config.seed)
        folder = Path(path).parent
        way_out = (
            f"--{option} {size} and --seed {config.seed} ask for another: point --data_path / --eval_data_path into "
            f"another folder (it is generated there), or delete {folder} to regenerate it"
        )
        wanted = {size_key: size, "seed": config.seed}
        check_same_record(folder / f"{split}.meta.json", wanted, f"the {split} split in {folder}", way_out)


def open_training_data(config: TrainConfig):
    """The training records: :class:`LlavaDataset` for a LLaVA JSON file, or, for a Hugging Face dataset (a folder,
    Parquet files, a hub id, or any ``data_path`` with ``data_split`` set), :class:`m3.data.hf.HFInstructionDataset`
    (one-turn conversations with lmms-eval's prompt and the reference answer). Every image of a LLaVA JSON file is
    decoded here, before the model is built (a bad one raises, or is dropped with ``skip_bad_images``)."""
    if config.data_split is not None or config.data_columns is not None or is_hf_location(config.data_path):
        data = load_hf(config.data_path, config.data_split, config.data_config, columns=config.data_columns)
        return HFInstructionDataset(data, skip_bad_images=config.skip_bad_images)
    image_root = config.image_root or str(Path(config.data_path).parent)
    dataset = LlavaDataset(config.data_path, image_root, skip_bad_images=config.skip_bad_images, check_images=True)
    if not len(dataset):
        skipped = f" (all {dataset.num_skipped} had bad images)" if dataset.num_skipped else ""
        raise ValueError(f"{config.data_path} holds no training records{skipped}")
    return dataset


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def checkpoint_files(checkpoint: Path) -> dict[str, str]:
    """The sha256 of every file of a checkpoint (by its path inside it) but the state file, which records them."""
    files = sorted(path for path in checkpoint.rglob("*") if path.is_file() and path.name != STATE_FILE)
    return {path.relative_to(checkpoint).as_posix(): file_sha256(path) for path in files}


def check_checkpoint_files(checkpoint: Path, recorded: dict[str, str] | None) -> None:
    """Refuse (:class:`CheckpointChangedError`) a checkpoint whose files differ from the hashes its run recorded when
    saving it (``recorded``; None: an older version recorded none, warned). A resume trusts these files: accelerate
    unpickles the optimizer, scheduler, sampler and random states (``torch.load`` with ``weights_only``: no code runs,
    but any values would be taken), so a file changed by accident or by hand is found here, not in the weights."""
    if recorded is None:
        logger.warning("%s records no file hashes (an older version wrote it): its files are not checked", checkpoint)
        return
    found = checkpoint_files(checkpoint)
    changed = [name for name in sorted({*recorded, *found}) if recorded.get(name) != found.get(name)]
    if changed:
        how = {
            name: "missing" if name not in found else "added" if name not in recorded else "changed" for name in changed
        }
        listed = ", ".join(f"{name} ({state})" for name, state in list(how.items())[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise CheckpointChangedError(
            f"{checkpoint} is not as its run saved it: {listed}{more} (sha256 recorded in {STATE_FILE}); a resume "
            f"would trust those files: delete {checkpoint} to resume from the checkpoint before it, or start afresh "
            "with --overwrite"
        )


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> Path:
    """``save_state`` into a temporary folder, then rename: a kill never leaves a half checkpoint. The state file
    records every file's sha256 (``files``), which a resume compares (:func:`check_checkpoint_files`)."""
    final = output_dir / CHECKPOINTS / f"step-{state['step']:07d}"
    temporary = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    fix = "free some space, then continue from the last complete checkpoint with --resume"
    with writing(f"checkpoint {final}", [temporary], fix):
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()  # every process's files are written before they are hashed
        if accelerator.is_main_process:
            state = {**state, "files": checkpoint_files(temporary)}
            (temporary / STATE_FILE).write_text(json.dumps(state, indent=2))
    if accelerator.is_main_process:
        if final.exists():  # never "Directory not empty": a checkpoint of this step is replaced whole
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in _checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train, before anything is loaded: unknown choices, scales named twice or not
    reachable on the model's grid, and counts that must be positive (``save_steps=0``: no periodic checkpoints)."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; expected one of {list(DATASETS)}")
    if config.scale_sampling not in SCALE_SAMPLINGS:
        raise ValueError(f"unknown scale_sampling {config.scale_sampling!r}; expected one of {list(SCALE_SAMPLINGS)}")
    if not 0 <= config.mixed_scale_fraction <= 1:
        raise ValueError(f"mixed_scale_fraction must be in [0, 1], got {config.mixed_scale_fraction}")
    if config.mixed_scale_fraction and config.scale_sampling == "random":
        raise ValueError("mixed_scale_fraction mixes the scales of every pass; it needs scale_sampling='averaged'")
    check_token_selection(config.token_selection)
    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {config.mixed_precision!r}")
    positive = ("batch_size", "gradient_accumulation_steps", "logging_steps", "max_length")
    at_least_zero = ("save_steps", "eval_steps", "save_total_limit", "eval_samples", "num_threads", "max_grad_norm")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in at_least_zero:
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {config.learning_rate}")
    if not 0 <= config.warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {config.warmup_ratio}")
    schedules = [kind.value for kind in SchedulerType]
    if config.lr_scheduler not in schedules:
        raise ValueError(f"unknown lr_scheduler {config.lr_scheduler!r}; expected one of {schedules}")
    if config.lr_cycles < 1 or (config.lr_cycles != 1 and config.lr_scheduler != "cosine_with_restarts"):
        raise ValueError(
            f"lr_cycles must be >= 1, and other than 1 only with cosine_with_restarts (got {config.lr_cycles})"
        )
    if not 0 < config.lr_decay_ratio <= 1 - config.warmup_ratio:
        raise ValueError(
            f"lr_decay_ratio must be in (0, 1 - warmup_ratio], got {config.lr_decay_ratio} "
            f"(warmup_ratio {config.warmup_ratio})"
        )
    if config.max_steps <= 0 and not config.num_epochs > 0:
        raise ValueError(f"give max_steps > 0 or num_epochs > 0 (got {config.max_steps} and {config.num_epochs})")
    if config.resume and config.overwrite:
        raise ValueError("--resume continues the run in output_dir, --overwrite deletes it: give one of them")
    for path, split, option in generated_splits(config):
        if getattr(config, option) < 1:
            raise ValueError(f"--{option} must be >= 1 (the size of the generated {split} split {path}), "
                             f"got {getattr(config, option)}")  # fmt: skip
    if config.model is None:
        grid = (IMAGE_SIZE // PATCH_SIZE) ** 2
    else:
        grid = load_m3_config(config.model).grid_tokens
    check_scales(parse_scales(config.scales), grid)


def scheduler_kwargs(config: TrainConfig, total_steps: int) -> dict:
    """The schedule-specific arguments of ``config.lr_scheduler`` for transformers' ``get_scheduler``."""
    if config.lr_scheduler == "cosine_with_restarts":
        return {"num_cycles": config.lr_cycles}
    if config.lr_scheduler == "warmup_stable_decay":
        return {"num_decay_steps": round(config.lr_decay_ratio * total_steps)}
    return {}


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run folder (what ``--resume`` continues from), or None."""
    checkpoints = _checkpoints(Path(output_dir))
    return checkpoints[-1] if checkpoints else None


def prepare_output_dir(config: TrainConfig, is_main_process: bool) -> Path | None:
    """Decide what happens to ``output_dir`` before the model is built; returns the checkpoint to resume from.

    ``--resume`` needs a checkpoint there. Without it a folder holding checkpoints or a model of an earlier run is
    refused (the old run's later checkpoints would fill the keep limit and delete the new ones), unless
    ``--overwrite``, which deletes them (on the main process). Every process decides alike, so all raise together.
    A path that cannot be a folder (an existing file) is refused here, not after training, when the model is saved.
    """
    output_dir = check_output_dir(config.output_dir, "--output_dir")
    checkpoints = output_dir / CHECKPOINTS
    last = latest_checkpoint(output_dir)
    used = [name for name in FINAL_FILES if (output_dir / name).exists()]
    # a kill during a save leaves step-N.tmp: an unfinished checkpoint, never resumed (the run holds nothing else)
    unfinished = sorted(p.name for p in checkpoints.glob("*.tmp")) if last is None and not used else []
    cut_off = f" ({', '.join(unfinished)}: cut off while being saved)" if unfinished else ""
    if config.resume:
        if last is None:
            fix = "start afresh with --overwrite instead" if unfinished else "run without --resume to start afresh"
            raise FileNotFoundError(f"--resume: {checkpoints} holds no checkpoint to resume from{cut_off}; {fix}")
        return last
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        used.insert(0, f"{CHECKPOINTS}/")
    if used and not config.overwrite:
        if unfinished:
            raise OutputDirInUseError(
                f"{output_dir} holds an unfinished checkpoint{cut_off} and nothing to resume; pass --overwrite to "
                "delete it and start afresh, or choose another --output_dir"
            )
        raise OutputDirInUseError(
            f"{output_dir} already holds a training run ({', '.join(used)}); pass --resume to continue it, "
            "--overwrite to delete it and start afresh, or choose another --output_dir"
        )
    if used and is_main_process:
        shutil.rmtree(checkpoints, ignore_errors=True)
        for name in FINAL_FILES:
            (output_dir / name).unlink(missing_ok=True)
    return None


def run_identity(config: TrainConfig, num_processes: int, dataset=None) -> dict:
    """What makes checkpoints part of one run: the data (a file's path and sha256; a Hugging Face dataset's location
    and fingerprint), the image folder, the starting model (path and weights fingerprint), the number of processes
    and the fields marked as such (:data:`m3.training_args.RUN_SETTINGS`). Stored in every checkpoint; ``--resume``
    compares it. ``dataset``: what :func:`open_training_data` returned (default: opened here)."""
    settings = {name: getattr(config, name) for name in RUN_SETTINGS}
    settings["scales"] = config.scale_list()
    dataset = open_training_data(config) if dataset is None else dataset
    if isinstance(dataset, HFInstructionDataset):
        data = {"data_path": str(config.data_path), "data_sha256": dataset.data.fingerprint, "image_root": None}
    else:
        path = Path(config.data_path)
        root = Path(config.image_root or path.parent).resolve()
        data = {"data_path": str(path.resolve()), "data_sha256": file_sha256(path), "image_root": str(root)}
    return {
        **data,
        "model": None if config.model is None else str(Path(config.model).resolve()),
        "model_weights": None if config.model is None else model_fingerprint(config.model)["weights_sha256"],
        "num_processes": num_processes,
        **settings,
    }


def check_resumable(checkpoint: Path, identity: dict, check_files: bool = True) -> dict:
    """The state of ``checkpoint`` after checking that it was written by this run (:func:`run_identity`;
    :class:`ResumeMismatchError` lists every difference) and, with ``check_files`` (the main process), that its files
    are the ones saved (:func:`check_checkpoint_files`)."""
    state = read_json(checkpoint / STATE_FILE, f"delete {checkpoint} to resume from the checkpoint before it")
    if check_files:
        check_checkpoint_files(checkpoint, state.get("files"))
    saved = state.get("run")
    if saved is None:
        logger.warning("%s records no run settings (an older version wrote it); they cannot be checked", checkpoint)
        return state
    unrecorded = sorted(set(identity) - set(saved))  # settings added to the identity after it was written
    if unrecorded:
        logger.warning("%s records no %s (an older version wrote it): not checked", checkpoint, ", ".join(unrecorded))
    differences = setting_differences(saved, {key: value for key, value in identity.items() if key in saved})
    if differences:
        raise ResumeMismatchError(
            f"{checkpoint} belongs to a run with other settings ({'; '.join(differences)}); resume it with its own "
            "settings, or start afresh with --overwrite or another --output_dir"
        )
    return state


# the launcher's request (set by `accelerate launch --config_file`, or by hand) -> what accelerate must then run
REQUESTED_BACKENDS = {
    "ACCELERATE_USE_FSDP": DistributedType.FSDP,
    "ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED,
}
CPU_LAUNCH = "ACCELERATE_USE_CPU=true torchrun --nproc_per_node N scripts/train_m3.py ..."


def check_launch(accelerator: Accelerator, environ: dict | None = None) -> None:
    """Refuse a launch that accelerate would not run as one job (:class:`LaunchError`), before anything is written.

    Without a GPU, accelerate leaves processes started by ``torchrun`` (or by ``accelerate launch`` with the GPU
    configs in ``configs/accelerate/``) each on its own, and with ``ACCELERATE_USE_CPU=true`` it runs them as CPU
    data-parallel even when FSDP or DeepSpeed was asked for: both would train something else than asked, silently."""
    environ = os.environ if environ is None else environ
    launched = int(environ.get("WORLD_SIZE", "1"))
    running = accelerator.distributed_type
    if launched > accelerator.num_processes:
        raise LaunchError(
            f"{launched} processes were launched, but accelerate runs each of them alone ({running.value}): they would "
            f"train separate copies into the same output_dir. Without a GPU launch with `{CPU_LAUNCH}`; the configs in "
            "configs/accelerate/ need GPUs"
        )
    for flag, backend in REQUESTED_BACKENDS.items():
        if str_to_bool(environ.get(flag, "false")) and running != backend:
            raise LaunchError(
                f"{backend.value} was asked for ({flag}), but accelerate runs {running.value} here: accelerate "
                f"enables {backend.value} only on GPUs (and other accelerators), not on CPU. On CPU use "
                f"data-parallel: `{CPU_LAUNCH}`"
            )


def check_finite_weights(model, step: int, config: TrainConfig) -> None:
    """Refuse to save weights that hold NaN or infinities (what too large a learning rate leaves)."""
    bad = non_finite_parameters(model)
    if bad:
        raise NonFiniteTrainingError(
            f"step {step}: {len(bad)} weight tensors are not finite (first: {bad[0]}), so they were not saved; "
            f"lower --learning_rate (now {config.learning_rate}) and resume from the last checkpoint or start afresh"
        )


def _evaluate(model, processor, items, scales: list[int]) -> dict[str, dict[int, float]]:
    """Accuracy per family (and ``overall``) and scale on the periodic evaluation's records: the overall figure
    alone hides which family a run has learned."""
    was_training = model.training
    model.eval()
    rows = evaluate_scales(model, processor, items, scales, show_progress=False)
    model.train(was_training)
    table: dict[str, dict[int, float]] = {}
    for row in accuracy_table(rows):
        table.setdefault(row["family"], {})[row["scale"]] = row["accuracy"]
    return table


def evaluation_line(step: int, table: dict[str, dict[int, float]]) -> str:
    """One progress line: overall accuracy per scale, then each family's at the largest scale."""
    overall = " ".join(f"{scale}:{accuracy:.3f}" for scale, accuracy in table[OVERALL].items())
    largest = max(table[OVERALL])
    families = " ".join(f"{family} {by_scale[largest]:.3f}" for family, by_scale in table.items() if family != OVERALL)
    return f"step {step} eval accuracy {overall} | at {largest}: {families}"


@dataclass
class TrainingRun:
    """What the step loop works on: the prepared model, optimizer, schedule and data (see :func:`train`), the run's
    identity (saved in every checkpoint) and the periodic evaluation's records."""

    accelerator: Accelerator
    model: torch.nn.Module
    processor: M3Processor
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    total_steps: int
    identity: dict
    eval_items: list


def train(config: TrainConfig) -> Path:
    """Train an M3 (or single-scale) model; returns the directory of the final ``save_pretrained`` model.

    Everything that can be checked before the model is built is: the settings, the output folder (a used one needs
    ``resume`` or ``overwrite``; a resumed checkpoint must belong to this run, file by file) and every training image
    (decoded). A non-finite loss stops training with :class:`NonFiniteTrainingError`; non-finite weights are never
    saved. One run at a time trains into an output folder (its lock names the other), and a refused launch leaves
    no folder it created (:func:`m3.runs.held_run_folder`)."""
    main_process = int(os.environ.get("RANK", "0")) == 0  # the launcher's rank: the Accelerator does not exist yet
    with held_run_folder(config.output_dir, "--output_dir", lock=main_process):
        return _train(config)


def _train(config: TrainConfig) -> Path:
    """:func:`train` in its held output folder."""
    check_config(config)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(  # before from_pretrained, as ZeRO-3 needs
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    check_launch(accelerator)  # a refused launch leaves nothing behind, not even the output folder
    check_output_dir(config.output_dir, "--output_dir")  # before the data is generated and the model trained
    set_seed(config.seed)
    if config.generate_data and accelerator.is_main_process:
        ensure_generated_data(config)
    accelerator.wait_for_everyone()
    resume_from = prepare_output_dir(config, accelerator.is_main_process)
    dataset = open_training_data(config)
    identity = run_identity(config, accelerator.num_processes, dataset)
    resumed_state = None
    if resume_from is not None:  # the files hashed once, on the main process (they are read by every one)
        resumed_state = check_resumable(resume_from, identity, check_files=accelerator.is_main_process)
    accelerator.wait_for_everyone()

    model, processor = build_model_and_processor(config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=M3Collator(processor, config.max_length),
    )
    updates_per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_epochs * updates_per_epoch)
    trainable = trainable_parameters(model)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(  # a prepared scheduler steps once per process
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
        scheduler_specific_kwargs=scheduler_kwargs(config, total_steps * accelerator.num_processes),
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    position = {"step": 0, "epoch": 0, "batches_in_epoch": 0}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        position = {key: resumed_state[key] for key in position}
        accelerator.print(
            f"resuming from {resume_from}: step {position['step']} of {total_steps} (epoch {position['epoch']}, "
            f"batch {position['batches_in_epoch']})"
        )
    eval_items = []
    if config.eval_data_path and config.eval_steps > 0 and Path(config.eval_data_path).exists():
        eval_set = LlavaDataset(config.eval_data_path, str(Path(config.eval_data_path).parent))
        eval_items = [eval_set[i] for i in range(min(config.eval_samples, len(eval_set)))]

    run = TrainingRun(accelerator, model, processor, optimizer, scheduler, loader, total_steps, identity, eval_items)
    step, history, stopped_early = train_steps(run, config, **position)
    if stopped_early:
        accelerator.print(f"stopped after step {step} (stop_after_steps); resume with --resume")
        return output_dir
    save_final_model(run, config, step, history)
    return output_dir


def train_steps(
    run: TrainingRun, config: TrainConfig, step: int, epoch: int, batches_in_epoch: int
) -> tuple[int, list[dict], bool]:
    """The optimizer steps from ``step`` (``batches_in_epoch`` batches into ``epoch``) to ``run.total_steps``, with
    logging, periodic evaluation and checkpoints; returns the last step, the history and whether
    ``stop_after_steps`` stopped it early."""
    accelerator, model, loader = run.accelerator, run.model, run.loader
    output_dir = Path(config.output_dir)
    scales = accelerator.unwrap_model(model).config.m3_scales
    batches_done = batches_in_epoch
    progress = tqdm(total=run.total_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    history: list[dict] = []
    random_scale = config.scale_sampling == "random"
    meter = ScaleLossMeter(LOSS_WINDOW if random_scale else 1)
    stopped_early = False
    started = time.perf_counter()  # the history's "seconds": wall time since this process's loop began
    while step < run.total_steps and not stopped_early:
        loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
        for batch in epoch_loader:
            step_scales = [sampled_scale(scales, config.seed, step)] if random_scale else scales
            passes = step_scales
            if config.mixed_scale_fraction:
                image_token_id = accelerator.unwrap_model(model).config.image_token_id
                passes = mixed_scale_passes(
                    batch["input_ids"], batch["attention_mask"], image_token_id, scales, config.mixed_scale_fraction,
                    config.seed, epoch * len(loader) + batches_done,
                )  # fmt: skip
            outputs = _optimizer_pass(run, config, batch, passes, step_scales, step)
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            meter.update({scale: value.item() for scale, value in outputs.per_scale_loss.items()})
            drawn = {"scale": step_scales[0]} if random_scale else {}
            losses = {**drawn, "loss": outputs.loss.item(), **{f"L{s}": v for s, v in meter.means().items()}}
            progress.set_postfix({k: f"{v:.3f}" if k != "scale" else v for k, v in losses.items()})  # keeps the order
            if step % config.logging_steps == 0:
                history.append({"step": step, **losses, "seconds": round(time.perf_counter() - started, 4)})
            if run.eval_items and step % config.eval_steps == 0 and accelerator.is_main_process:
                table = _evaluate(accelerator.unwrap_model(model), run.processor, run.eval_items, scales)
                families = {family: by_scale for family, by_scale in table.items() if family != OVERALL}
                history.append({"step": step, "eval_accuracy": table[OVERALL], "eval_family_accuracy": families})
                progress.write(evaluation_line(step, table))
            epoch_done = batches_done == len(loader)
            state = {"step": step, "epoch": epoch + epoch_done, "batches_in_epoch": 0 if epoch_done else batches_done}
            if (config.save_steps and step % config.save_steps == 0) or step == config.stop_after_steps:
                check_finite_weights(model, step, config)
                save_checkpoint(accelerator, output_dir, {**state, "run": run.identity}, config.save_total_limit)
            if step == config.stop_after_steps:
                stopped_early = True
            if step >= run.total_steps or stopped_early:
                break
        else:
            epoch, batches_done = epoch + 1, 0
    progress.close()
    return step, history, stopped_early


def _optimizer_pass(run: TrainingRun, config: TrainConfig, batch: dict, passes, step_scales: list[int], step: int):
    """Forward and backward of one micro-batch (the optimizer steps when accelerate has accumulated enough); the
    outputs' ``per_scale_loss`` is keyed by each pass's scale. A non-finite loss raises before the weights change."""
    accelerator, model = run.accelerator, run.model
    with accelerator.accumulate(model):
        outputs = model(**batch, m3_scales=passes)
        outputs.per_scale_loss = dict(zip(step_scales, outputs.per_scale_loss.values()))  # a pass by its scale
        if not torch.isfinite(outputs.loss.detach()):
            per_scale = ", ".join(f"{s}: {v.item():.4g}" for s, v in outputs.per_scale_loss.items())
            raise NonFiniteTrainingError(
                f"step {step + 1}: the loss is not finite ({per_scale}); training stopped before this step "
                f"changed the weights. Lower --learning_rate (now {config.learning_rate}) and resume from "
                "the last checkpoint (--resume) or start afresh (--overwrite)"
            )
        accelerator.backward(outputs.loss)
        clip = config.max_grad_norm > 0 and accelerator.distributed_type != DistributedType.DEEPSPEED
        if clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return outputs


def save_final_model(run: TrainingRun, config: TrainConfig, step: int, history: list[dict]) -> None:
    """``save_pretrained`` the trained model and its processor into ``output_dir``, with ``train_summary.json`` (the
    flat config, the steps and the history); non-finite weights are refused."""
    accelerator, output_dir = run.accelerator, Path(config.output_dir)
    check_finite_weights(run.model, step, config)
    state_dict = accelerator.get_state_dict(run.model)  # every process takes part: FSDP and ZeRO-3 gather the shards
    if accelerator.is_main_process:
        fix = "free some space, then save it from the last checkpoint with --resume"
        with writing(f"the model to {output_dir}", [output_dir / name for name in FINAL_FILES], fix):
            accelerator.unwrap_model(run.model).save_pretrained(output_dir, state_dict=state_dict)
            run.processor.save_pretrained(output_dir)
            summary = {"config": asdict(config), "steps": step, "history": history}
            (output_dir / "train_summary.json").write_text(dumps_json(summary, indent=2))
    accelerator.wait_for_everyone()
