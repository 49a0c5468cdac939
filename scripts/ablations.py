"""The paper's ablations on the tiny world: Tables 4, 6 and 8 (see m3/ablations.py).

Examples:
    python scripts/ablations.py --table 4 6 8 --out runs/ablations       # all three; 5 trained models
    python scripts/ablations.py --table 4 --m3-model checkpoints/tiny-m3 --ss-model runs/tiny-ss576
    python scripts/ablations.py --table 4 6 8 --out runs/ablations-smoke --smoke   # end to end in seconds

Trains (or reuses, or resumes) the runs a table needs under OUT/models/NAME: m3-avg_pool, m3-spatial,
m3-sequential, m3-random, ss-576 (the tiny preset with one setting changed), evaluates them on the
granularity test split at every scale and writes OUT/tableN.md (plus each evaluation's report under OUT/tableN/).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=int, nargs="+", choices=[4, 6, 8], required=True, help="paper tables")
    parser.add_argument("--out", default="runs/ablations", help="output folder (runs, evaluations, tables)")
    parser.add_argument("--preset", default="tiny", help="training preset the runs start from")
    parser.add_argument("--data-dir", help="granularity benchmark folder (default: OUT/granularity)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps per trained model (default: the preset's)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test questions")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    parser.add_argument(
        "--m3-model", help="an M3 model (the tiny preset) that stands for the m3-avg_pool run in every table"
    )
    parser.add_argument("--ss-model", help="Table 4: an SS-576 model to evaluate instead of training one")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 steps: check the commands end to end")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny)")
    args = parser.parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from m3.ablations import AblationSettings, run_tables
    from m3.cli import use_threads

    use_threads(args.threads)
    settings = AblationSettings(
        out=args.out,
        preset=args.preset,
        data_dir=args.data_dir,
        limit=args.limit,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        m3_model=args.m3_model,
        ss_model=args.ss_model,
        smoke=args.smoke,
    )
    for path in run_tables(args.table, settings):
        print(f"\n{path}\n\n{path.read_text()}")


if __name__ == "__main__":
    main()
