"""Train an M3 model (or the single-scale SS baseline) with accelerate.

Examples:
    python scripts/train_m3.py --preset tiny                      # CPU: granularity benchmark, tiny model
    python scripts/train_m3.py --preset tiny --scales 576 --output_dir runs/tiny-ss576   # SS baseline
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml scripts/train_m3.py \\
        --preset llava-1.5-7b --model checkpoints/llava-1.5-7b-hf --data_path data/llava_v1_5_mix665k.json
    python scripts/train_m3.py --preset tiny --resume             # continue from the newest checkpoint

A preset fills in defaults; any flag overrides it; --config FILE (JSON or YAML) overrides the preset too.
A used --output_dir needs --resume (continue its run; refused if the run's data, batch size, scales, model or other
settings differ) or --overwrite (start afresh).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None):
    from m3.training_args import PRESETS, TrainConfig, argument_parser

    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="defaults to start from")
    parser.add_argument("--config", help="JSON or YAML file of TrainConfig fields (overrides the preset)")
    defaults = dict(PRESETS[known.preset])
    if known.config:
        defaults.update(read_config_file(known.config))
    unknown = set(defaults) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        parser.error(f"unknown settings in the preset/config file: {sorted(unknown)}")
    parser.set_defaults(**defaults)
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(args=rest + ["--preset", known.preset])
    return TrainConfig.from_arguments(model_args, data_args, training_args)


def read_config_file(path: str) -> dict:
    """The settings in a --config file (JSON or YAML); a file that does not parse is named in the error."""
    from m3.files import DamagedFileError, read_json

    if not path.endswith((".yaml", ".yml")):
        settings = read_json(path, "fix the file")
    else:
        import yaml

        try:
            settings = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise DamagedFileError(path, f"not valid YAML: {error}", "fix the file") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a mapping of TrainConfig fields, got a {type(settings).__name__}")
    return settings


def main(argv: list[str] | None = None) -> None:
    from m3.cli import user_errors  # (parse_args imports m3.training anyway)

    with user_errors():
        config = parse_args(argv)
        from m3.training import train

        output = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model saved to {output}")


if __name__ == "__main__":
    main()
