"""Train an M3 model (or the single-scale SS baseline) with accelerate.

Examples:
    python scripts/train_m3.py --preset tiny                      # CPU: granularity benchmark, tiny model
    python scripts/train_m3.py --preset tiny --scales 576 --output_dir runs/tiny-ss576   # SS baseline
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml scripts/train_m3.py \\
        --preset llava-1.5-7b --model checkpoints/llava-1.5-7b-hf --data_path data/llava_v1_5_mix665k.json
    python scripts/train_m3.py --preset tiny --resume             # continue from the newest checkpoint

A preset fills in defaults; any flag overrides it; --config FILE (JSON or YAML) overrides the preset too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None):
    from transformers import HfArgumentParser

    from m3.training import PRESETS, TrainConfig

    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(TrainConfig, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="defaults to start from")
    parser.add_argument("--config", help="JSON or YAML file of TrainConfig fields (overrides the preset)")
    defaults = dict(PRESETS[known.preset])
    if known.config:
        text = Path(known.config).read_text()
        if known.config.endswith((".yaml", ".yml")):
            import yaml

            defaults.update(yaml.safe_load(text))
        else:
            defaults.update(json.loads(text))
    unknown = set(defaults) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        parser.error(f"unknown settings in the preset/config file: {sorted(unknown)}")
    parser.set_defaults(**defaults)
    (config,) = parser.parse_args_into_dataclasses(args=rest + ["--preset", known.preset])[:1]
    return config


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    from m3.training import train

    output = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model saved to {output}")


if __name__ == "__main__":
    main()
