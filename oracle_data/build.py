"""Build an oracle folder: samples -> shards of oracle rows, resumable, split across processes.

The samples are cut into shards (``datasets.image_runs`` of ``shard_size``), numbered in data order. Under
``accelerate launch`` process p of P builds shards p, p + P, p + 2P, ...; a single process builds them all.
Shards that already exist are skipped, so rerunning the same command after a crash (or ``kill -9``) finishes
the build with exactly the rows an uninterrupted one gives. The main process keeps the manifest up to date and
marks it complete once every shard is there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from m3.metrics import CORRECT_THRESHOLD

from . import store
from .datasets import OracleData, image_runs, load_samples
from .generation import oracle_rows

PROMPT_FORMAT = "llava_v1 single turn: 'USER: <image>\\n{question}[\\n{A. option}...\\n{instruction}] ASSISTANT:'"


def prompt_format(processor) -> str:
    """The manifest's ``settings.prompt``: how every sample was asked. The ``plain`` template keeps the wording of
    the oracles built before templates had names (:data:`PROMPT_FORMAT`), so they still resume."""
    if processor.template.name == "plain":
        return PROMPT_FORMAT
    return f"{processor.template.name} single turn: {processor.prompt('{question}')!r}"


def model_summary(model_dir: str | os.PathLike, config, scales: Sequence[int]) -> dict:
    """The manifest's ``model`` entry: where the model is, what identifies it, and its scale/size settings."""
    return {
        "path": str(Path(model_dir).resolve()),
        "fingerprint": store.model_fingerprint(model_dir),
        "model_type": config.model_type,
        "scales": list(scales),
        "m3_scales": list(config.m3_scales),
        "grid_tokens": config.grid_tokens,
        "text_hidden_size": config.text_config.hidden_size,
        "embedding_dim": config.text_config.hidden_size,
        "vocab_size": config.text_config.vocab_size,
        "embedding": "scale-1 visual token (mean of the projected grid; LLaVA-NeXT: of the base crop)",
    }


def data_summary(data: OracleData, limit: int | None) -> dict:
    """The manifest's ``data`` entry. For a dataset: where it is (a resolved folder or a hub id), the split, the
    configuration, the layout and its columns; ``sha256`` then hashes the dataset's fingerprint, split and layout."""
    metrics: dict[str, int] = {}
    for sample in data.samples:
        metrics[sample.metric] = metrics.get(sample.metric, 0) + 1
    common = {
        "num_samples": len(data.samples),
        "limit": limit,
        "skipped_without_image": len(data.skipped_ids),
        "metrics": metrics,
    }
    if data.hf is not None:
        local = Path(data.hf.location)
        return {
            "path": str(local.resolve()) if local.exists() else data.hf.location,
            "sha256": data.hf.fingerprint,
            "format": data.format,
            "image_root": None,
            "split": data.hf.split,
            "config": data.hf.config,
            "layout": data.hf.layout.name,
            "columns": data.hf.layout.columns(),
            "prompt": data.hf.layout.prompt,
            "post_prompt": data.hf.layout.post_prompt,
            **common,
        }
    return {
        "path": str(data.path.resolve()),
        "sha256": store.file_sha256(data.path),
        "format": data.format,
        "image_root": str(data.image_root.resolve()),
        **common,
    }


def _process_state():
    """accelerate's process state (index, count, device, barrier); a plain single process without a launcher.

    Without a GPU (or with ``ACCELERATE_USE_CPU=true``) processes started by ``torchrun`` join as CPU processes
    (gloo); a PartialState built without ``cpu=True`` would leave each of them thinking it is alone.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import is_npu_available, is_xpu_available, parse_flag_from_env

    accelerator = torch.cuda.is_available() or is_xpu_available() or is_npu_available()
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not accelerator)


def build_oracle(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    data_format: str = "auto",
    metric: str = "exact_match",
    scales: Sequence[int] | None = None,
    batch_size: int = 16,
    shard_size: int = 256,
    max_new_tokens: int = 8,
    limit: int | None = None,
    progress: bool = True,
    model=None,
    processor=None,
    split: str | None = None,
    dataset_config: str | None = None,
    layout: str | None = "auto",
    columns: dict | str | None = None,
    hidden_scales: Sequence[int] | None = None,
) -> Path:
    """Build (or finish) the oracle of ``model_dir`` on ``data_path`` in ``out_dir``; returns the manifest path.

    ``data_path`` is a data file or a Hugging Face dataset (a folder, Parquet files or a hub id; ``split``,
    ``dataset_config``, ``layout`` and ``columns`` choose and read it: see :func:`m3.data.hf.load_hf`).
    ``metric`` scores samples that name none; ``scales`` default to the model's ``m3_scales``; ``hidden_scales``
    (default: the two smallest scales) are those whose last hidden state is recorded for probe predictors. ``model`` and
    ``processor`` may be passed already loaded (they must be the ones saved in ``model_dir``). Raises
    :class:`oracle_data.store.OracleMismatchError` if ``out_dir`` holds an oracle of another model, data file
    or settings.
    """
    from m3.data.llava import check_image_files
    from m3.loading import load_m3_config, load_m3_model
    from m3.pooling import check_scales
    from m3.processing import M3Processor

    started = time.perf_counter()  # the manifest's build "seconds": this call's wall time, on the main process
    if batch_size < 1 or shard_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size, shard_size and max_new_tokens must be >= 1, got {batch_size}, {shard_size}, {max_new_tokens}"
        )
    state = _process_state()
    out_dir = Path(out_dir)
    data = load_samples(data_path, image_root, data_format, metric, limit, True, split, dataset_config, layout, columns)
    if not data.samples:
        raise ValueError(f"{data_path} holds no sample with an image")
    config = model.config if model is not None else load_m3_config(model_dir)
    scales = check_scales(scales or config.m3_scales, config.grid_tokens)
    hidden_scales = store.default_hidden_scales(scales) if hidden_scales is None else sorted(map(int, hidden_scales))
    schema = store.oracle_schema(scales, hidden_scales)  # checks that the hidden scales are built
    shards = image_runs(data.samples, shard_size)
    # every image still to answer must decode, before anything is written or the model loads
    pending = [s for i, shard in enumerate(shards) if not (out_dir / store.shard_file(i)).is_file() for s in shard]
    check_image_files([(s.image_path, f"sample {s.sample_id}") for s in pending if s.dataset_image is None])
    for sample in {s.image_key: s for s in pending if s.dataset_image is not None}.values():
        sample.dataset_image.open()  # raises BadImageError naming the dataset, split, row and column
    processor = processor or M3Processor.from_pretrained(model_dir, config=config)
    if pending:  # and every prompt must fit the context at the largest scale
        check_prompt_lengths(processor, config, pending, max(scales), max_new_tokens)
    manifest = {
        "schema_version": store.SCHEMA_VERSION,
        "complete": False,
        "model": model_summary(model_dir, config, scales),
        "data": data_summary(data, limit),
        "metric": metric,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "shard_size": shard_size,
            "correct_threshold": CORRECT_THRESHOLD,
            "decoding": "greedy, stops at EOS",
            "prompt": prompt_format(processor),
            "hidden_scales": hidden_scales,
        },
        "build": {"batch_size": batch_size, "num_processes": state.num_processes, "started": _now()},
        "num_shards": len(shards),
        "shards": [],
        "num_rows": 0,
        "columns": schema.names,
    }

    def rows_of(shard: Sequence, advance: Callable[[int], object]) -> list[dict]:
        nonlocal model, processor
        if model is None:
            model = load_m3_model(model_dir).to(state.device).eval()
        processor = processor or M3Processor.from_pretrained(model_dir, config=model.config)
        rows = []
        for batch in image_runs(shard, batch_size):
            rows.extend(oracle_rows(model, processor, batch, scales, max_new_tokens, hidden_scales))
            advance(len(batch))
        return rows

    def sample_ids(shard: Sequence) -> list[str]:
        return [sample.sample_id for sample in shard]

    return write_oracle(out_dir, manifest, shards, rows_of, schema, sample_ids, started, state, progress)


def write_oracle(
    out_dir: Path,
    manifest: dict,
    shards: Sequence[Sequence],
    rows_of: Callable[[Sequence, Callable[[int], object]], list[dict]],
    schema,
    sample_ids: Callable[[Sequence], list[str]],
    started: float,
    state=None,
    progress: bool = True,
    desc: str = "oracle",
    unit: str = "sample",
) -> Path:
    """The build path of every oracle: open (or resume) ``manifest`` in ``out_dir``, write each missing shard with
    the pluggable row generator, keep the manifest up to date and mark it complete; returns the manifest path.

    ``rows_of(shard, advance)`` returns the oracle rows of one shard's items (``schema``'s columns), calling
    ``advance(n)`` as it answers ``n`` of them; it is called only for shards still to write, so it should load its
    model on its first call. ``sample_ids(shard)`` are the ``sample_id`` values its rows hold: a shard already on
    disk with others is refused. ``started`` (``time.perf_counter()``) times the build; ``state`` is accelerate's
    process state (:func:`_process_state` when None): process p of P writes shards p, p + P, ...
    """
    state = state or _process_state()
    if state.is_main_process:
        store.remove_stale_temporaries(out_dir)
    manifest = store.open_build(out_dir, manifest, create=state.is_main_process)
    state.wait_for_everyone()

    mine = range(state.process_index, len(shards), state.num_processes)
    todo = []
    for index in mine:
        written = store.shard_sample_ids(out_dir, index)
        if written is None:
            todo.append(index)
        elif written != sample_ids(shards[index]):
            raise store.OracleMismatchError(
                f"{out_dir / store.shard_file(index)} holds other samples than the data assigns to it; "
                "use a fresh --out"
            )
    if todo:
        total = sum(len(shards[i]) for i in mine)
        done_before = total - sum(len(shards[index]) for index in todo)
        entries = store.shard_entries(out_dir, len(shards)) if state.is_main_process else []
        bar = tqdm(
            total=total,
            initial=done_before,  # a resumed build shows what is already done; the ETA covers the rest
            desc=desc,
            unit=unit,
            disable=not (progress and state.is_main_process),
        )
        with bar:
            for index in todo:
                rows = rows_of(shards[index], bar.update)
                store.write_shard(out_dir, index, rows, schema)
                if state.is_main_process:  # its own shards as they come; the others' at the end
                    entries.append(store.shard_entry(index, len(rows)))
                    manifest = store.update_manifest(out_dir, manifest, entries)
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [i for i in range(len(shards)) if not (out_dir / store.shard_file(i)).is_file()]
        if missing:
            raise RuntimeError(f"{out_dir}: shards {missing[:5]} are missing after the build; rerun the command")
        seconds = round(time.perf_counter() - started, 3)
        manifest["build"] = dict(manifest["build"], finished=_now(), seconds=seconds, num_processes=state.num_processes)
        store.update_manifest(out_dir, manifest, complete=True)
    state.wait_for_everyone()
    return store.manifest_path(out_dir)


def check_prompt_lengths(processor, config, samples: Sequence, scale: int, max_new_tokens: int) -> None:
    """Refuse, before the model loads, a sample whose prompt with ``scale``'s visual tokens and
    ``max_new_tokens`` overruns the model's context (:func:`m3.prompting.check_context`)."""
    from PIL import Image

    from m3.prompting import check_context, prompt_token_counts

    sizes = None
    if getattr(config, "image_grid_pinpoints", None) is not None:  # NeXT counts follow the size (the header is enough)
        images = [s.dataset_image.open() if s.dataset_image is not None else Image.open(s.image_path) for s in samples]
        sizes = [[(image.height, image.width)] for image in images]
    texts = [processor.prompt(sample.prompt) for sample in samples]
    names = [f"sample {sample.sample_id}" for sample in samples]
    text, visual = prompt_token_counts(processor.tokenizer, config, texts, [1] * len(samples), scale, sizes)
    check_context(config, text, visual, max_new_tokens, names, [scale] * len(names))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
