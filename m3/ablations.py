"""The paper's ablations on the tiny world (Tables 4, 6 and 8) as resumable, committed runs.

- Table 4: M3 and the single-scale SS-576 model, each evaluated with every token selection (``avg_pool``,
  ``spatial``, ``sequential``) applied at inference time, at every scale.
- Table 6: M3 trained with each token selection, each evaluated with the selection it was trained with.
- Table 8: M3 trained with the averaged multi-scale loss against one random scale per optimizer step.

Every trained model is one named run (:data:`RUNS`) of the ``tiny`` preset (or another :data:`PRESETS` entry) with
one setting changed and no periodic evaluation; a run is shared by the tables that need it (``m3-avg_pool`` serves
all three), reused once trained, and resumed if it was killed. Evaluation is :func:`m3.evaluation.run_evaluation`
on the granularity test split. Each table is written as markdown (overall and per-family accuracy per scale).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .data.granularity import DEFAULT_NUM_IMAGES, ensure_split
from .evaluation import comparison_markdown, run_evaluation
from .files import read_json
from .metrics import OVERALL
from .pooling import TOKEN_SELECTIONS
from .training import latest_checkpoint, train
from .training_args import PRESETS, TrainConfig

# The setting each run changes from the preset; everything else (steps, data, lr, seed) is shared.
RUNS: dict[str, dict] = {
    "m3-avg_pool": {},
    "m3-spatial": {"token_selection": "spatial"},
    "m3-sequential": {"token_selection": "sequential"},
    "m3-random": {"scale_sampling": "random"},
    "ss-576": {"scales": "576"},
}
TABLE_TITLES = {
    4: "Table 4: M3 vs SS-576 with each token selection applied at inference",
    6: "Table 6: M3 trained with each token selection (evaluated with it)",
    8: "Table 8: averaged multi-scale loss vs one random scale per step",
}
# No periodic evaluation during training: the tables are the evaluation.
NO_PERIODIC_EVAL = dict(eval_data_path=None, eval_steps=0)
RUN_CONTROL = ("resume", "overwrite")  # how a run was started, not what it trains: not compared with a saved run
# --smoke: a few steps of a 32-wide model on a handful of images, to check the commands end to end.
SMOKE_TRAINING = dict(train_images=6, max_steps=2, batch_size=4, tiny_hidden_size=32, save_steps=100, logging_steps=1)
SMOKE_TEST_IMAGES = 2


@dataclass
class AblationSettings:
    """Where the runs go and how big they are; the defaults reproduce the committed tables."""

    out: str = "runs/ablations"
    preset: str = "tiny"
    data_dir: str | None = None  # granularity benchmark folder; default: OUT/granularity
    test_images: int | None = None  # images in a generated test split (4 questions each); default: the benchmark's
    limit: int | None = None  # evaluate only the first N test questions
    max_steps: int | None = None  # override the preset's optimizer steps (a shorter run)
    batch_size: int = 16  # evaluation batch size
    m3_model: str | None = None  # every table: this M3 model stands for the m3-avg_pool run (not trained then)
    ss_model: str | None = None  # Table 4: evaluate this SS-576 model instead of training the ss-576 run
    smoke: bool = False

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else Path(self.out) / "granularity"


def run_config(name: str, settings: AblationSettings) -> TrainConfig:
    """The training config of run ``name``: the preset, no periodic evaluation, the run's one change."""
    if name not in RUNS:
        raise ValueError(f"unknown ablation run {name!r}; expected one of {sorted(RUNS)}")
    fields: dict = {**PRESETS[settings.preset], **NO_PERIODIC_EVAL}
    if TrainConfig(**fields).generate_data:  # the tiny world: the benchmark under data_dir
        fields["data_path"] = str(settings.data_path / "train.chat.json")
    if settings.smoke:
        fields.update(SMOKE_TRAINING)
    if settings.max_steps is not None:
        fields["max_steps"] = settings.max_steps
    fields.update(RUNS[name], output_dir=str(Path(settings.out) / "models" / name), resume=True)
    return TrainConfig(**fields)


def trained_model(config: TrainConfig) -> Path:
    """Train the run (resuming a killed one) unless its final model exists with exactly these settings."""
    output = Path(config.output_dir)
    summary = output / "train_summary.json"
    if summary.exists() and (output / "config.json").exists():
        saved = read_json(summary, "delete the run's folder to train it again").get("config", {})
        changed = sorted(
            key for key, value in asdict(config).items() if key not in RUN_CONTROL and saved.get(key) != value
        )
        if changed:
            raise ValueError(
                f"{output} holds a model trained with other settings ({', '.join(changed)}); "
                "delete it or choose another --out"
            )
        return output
    start = time.perf_counter()
    train(replace(config, resume=latest_checkpoint(output) is not None))  # resume a killed run, else start
    print(f"trained {output.name} in {time.perf_counter() - start:.0f} s")
    return output


def granularity_test_split(settings: AblationSettings) -> Path:
    """The granularity test split (written if missing, seed 0 like ``python -m m3.data.granularity``)."""
    images = settings.test_images or (SMOKE_TEST_IMAGES if settings.smoke else DEFAULT_NUM_IMAGES["test"])
    return ensure_split(settings.data_path / "test.json", "test", images, seed=0)


def evaluate_models(
    models: dict[str, tuple[Path, str | None]], settings: AblationSettings, out: Path
) -> dict[str, list[dict]]:
    """Accuracy tables of ``{label: (model_dir, token_selection or None = the model's own)}`` on the test split."""
    data = granularity_test_split(settings)
    tables = {}
    for label, (model_dir, selection) in models.items():
        folder = out / re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")
        tables[label] = run_evaluation(
            [model_dir], data, folder, token_selection=selection, limit=settings.limit, batch_size=settings.batch_size,
            overwrite=True,  # an evaluation here is recomputed by every rerun, whatever its settings were
        )[Path(model_dir).name]  # fmt: skip
    return tables


def table_markdown(title: str, tables: dict[str, list[dict]], notes: Sequence[str] = ()) -> str:
    """Overall accuracy per scale (one row per model), then the same per question family."""
    scales = sorted({row["scale"] for table in tables.values() for row in table})
    families = [f for f in dict.fromkeys(row["family"] for t in tables.values() for row in t) if f != OVERALL]
    count = next(row["count"] for table in tables.values() for row in table if row["family"] == OVERALL)
    parts = [f"# {title}\n", f"Accuracy by scale (visual tokens per image), {count} test questions.\n"]
    parts += [f"- {note}" for note in notes]
    parts.append("\n## Overall\n\n" + comparison_markdown(tables, scales))
    parts += [f"## {family}\n\n" + comparison_markdown(tables, scales, family) for family in families]
    return "\n".join(parts)


def _train_runs(names: Sequence[str], settings: AblationSettings) -> dict[str, Path]:
    """The runs' model folders, trained when needed; ``settings.m3_model`` stands for ``m3-avg_pool``."""
    given = {"m3-avg_pool": settings.m3_model, "ss-576": settings.ss_model}
    return {name: Path(given[name]) if given.get(name) else trained_model(run_config(name, settings)) for name in names}


def run_table(table: int, settings: AblationSettings) -> Path:
    """Train what ``table`` needs (or reuse it), evaluate, write ``OUT/table{N}.md``; returns that file."""
    out = Path(settings.out)
    steps = run_config("m3-avg_pool", settings).max_steps
    notes = [f"preset `{settings.preset}`, {steps} optimizer steps per trained model" + (" (smoke)" * settings.smoke)]
    if table == 4:
        models = {}
        runs = _train_runs(["m3-avg_pool", "ss-576"], settings)
        m3, ss = runs["m3-avg_pool"], runs["ss-576"]
        for name, model_dir in (("M3", m3), ("SS-576", ss)):
            models.update({f"{name} + {selection}": (model_dir, selection) for selection in TOKEN_SELECTIONS})
        notes.append(f"models: M3 = `{m3}`, SS-576 = `{ss}`; the selection is applied at inference only")
    elif table == 6:
        runs = _train_runs([f"m3-{selection}" for selection in TOKEN_SELECTIONS], settings)
        models = {f"M3 trained with {name[3:]}": (path, None) for name, path in runs.items()}
        notes.append(f"models: {', '.join(f'`{path}`' for path in runs.values())}")
    elif table == 8:
        runs = _train_runs(["m3-avg_pool", "m3-random"], settings)
        models = {"averaged (every scale each step)": (runs["m3-avg_pool"], None)}
        models["random (one scale per step)"] = (runs["m3-random"], None)
        notes.append(f"models: averaged = `{runs['m3-avg_pool']}`, random = `{runs['m3-random']}`")
    else:
        raise ValueError(f"unknown table {table}; expected one of {sorted(TABLE_TITLES)}")
    start = time.perf_counter()
    tables = evaluate_models(models, settings, out / f"table{table}")
    print(f"table {table}: evaluated {len(models)} model/selection pairs in {time.perf_counter() - start:.0f} s")
    path = out / f"table{table}.md"
    path.write_text(table_markdown(TABLE_TITLES[table], tables, notes))
    return path


def run_tables(tables: Sequence[int], settings: AblationSettings) -> list[Path]:
    """:func:`run_table` for each table, sharing the trained runs."""
    return [run_table(table, settings) for table in tables]
