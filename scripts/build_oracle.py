"""Build oracle labels: for every sample and every scale, the M3 model's answer, its score and whether it is right.

Examples:
    python scripts/build_oracle.py --model runs/tiny-m3 --data runs/granularity/test.json --out runs/oracle --report
    python scripts/build_oracle.py --model ckpt/llava-next-m3 --data textvqa/val.jsonl --metric vqa_accuracy \\
        --out runs/oracle-textvqa
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/build_oracle.py --model ... --data ... --out ...
    python scripts/build_oracle.py --report-only --out runs/oracle
    python scripts/build_oracle.py --model ckpt/m3 --data lmms-lab/POPE --split test --out runs/oracle-pope
    python scripts/build_oracle.py --model ckpt/m3 --data data/textvqa --split validation --out runs/oracle-textvqa

Data: a LLaVA-format JSON list (e.g. a granularity split), a JSONL question file (one object per line: id,
image, question, answers, optional choices / metric / family), or a Hugging Face dataset (a save_to_disk folder,
Parquet files, or a hub id when online) in a known layout (TextVQA, DocVQA, ChartQA, POPE, MMBench, ScienceQA as
lmms-lab publishes them) or mapped with --columns; see docs/oracle.md. Writes OUT/manifest.json and
OUT/shards/*.parquet (read them with oracle_data.load_oracle). Rerun the same command to resume a killed build.
"""

from __future__ import annotations

import argparse

METRIC_NAMES = ("exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice", "pope")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="saved M3 / llava-hf model directory (with tokenizer and image processor)")
    parser.add_argument(
        "--data", help="LLaVA JSON (*.json), question file (*.jsonl), or a dataset folder, *.parquet or hub id"
    )
    parser.add_argument("--out", required=True, help="output folder (manifest.json, shards/, report.md)")
    parser.add_argument("--image-root", help="folder the image paths are relative to (default: the data file's)")
    parser.add_argument("--format", choices=("auto", "llava", "jsonl", "hf"), default="auto", help="default: guessed")
    parser.add_argument("--split", help="dataset split (e.g. validation, test); needed when a dataset has several")
    parser.add_argument("--dataset-config", help="hub configuration of a dataset (e.g. ScienceQA-IMG, DocVQA, en)")
    parser.add_argument(
        "--layout",
        default="auto",
        help="dataset layout: auto (detected from the columns), textvqa, docvqa, chartqa, pope, mmbench, scienceqa",
    )
    parser.add_argument(
        "--columns",
        help="dataset column mapping ROLE=COLUMN,... (roles: question, answers, image, choices, hint, id, image_id, "
        "family; letter columns as choices=A|B|C|D); scored with --metric unless the layout is known",
    )
    parser.add_argument(
        "--metric", default="exact_match", help=f"metric of samples that name none: {', '.join(METRIC_NAMES)}"
    )
    parser.add_argument("--scales", help="comma-separated scales (default: the model's m3_scales)")
    parser.add_argument(
        "--hidden-scales", help="comma-separated scales whose last hidden state is recorded (default: the two smallest)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="samples per generate call")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per Parquet shard (the resume unit)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=8, help="cap on generated tokens (greedy decoding stops at EOS first)"
    )
    parser.add_argument("--limit", type=int, help="use only the first N samples")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--report", action="store_true", help="write OUT/report.md and report.png after the build")
    parser.add_argument("--report-only", action="store_true", help="only write the report of an existing build")
    args = parser.parse_args(argv)
    if not args.report_only and (args.model is None or args.data is None):
        parser.error("--model and --data are required (unless --report-only)")
    if args.metric not in METRIC_NAMES:
        parser.error(f"unknown --metric {args.metric!r}; choose one of {', '.join(METRIC_NAMES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from m3.pooling import parse_scales
    from oracle_data.report import write_report

    if not args.report_only:
        from m3.cli import use_threads
        from oracle_data.build import build_oracle

        use_threads(args.threads)
        manifest = build_oracle(
            args.model,
            args.data,
            args.out,
            image_root=args.image_root,
            data_format=args.format,
            metric=args.metric,
            scales=parse_scales(args.scales) if args.scales is not None else None,
            hidden_scales=parse_scales(args.hidden_scales) if args.hidden_scales is not None else None,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            progress=not args.no_progress,
            split=args.split,
            dataset_config=args.dataset_config,
            layout=args.layout,
            columns=args.columns,
        )
        from oracle_data.build import _process_state

        if not _process_state().is_main_process:
            return
        print(f"oracle written: {manifest}")
    if args.report or args.report_only:
        report = write_report(args.out)
        print(report.read_text())


if __name__ == "__main__":
    main()
