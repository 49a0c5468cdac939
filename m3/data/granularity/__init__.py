"""Granularity benchmark: procedural images where the image, not only the question, decides how many visual
tokens a question needs.

The current generator is version 7 (:mod:`.v7`: which colour sits in the white frame and in the black one, among
squares of 5-40 px and a drawn number of distractors, so that size and clutter set the scale); versions 6 (:mod:`.v6`:
the same questions on a lattice of 5-11 px squares) and 5 (:mod:`.v5`: which of two squares is left or on top) stay
reproducible. The names below are the current version's; :mod:`.splits` writes splits of any version.

CLI: ``python -m m3.data.granularity --out DIR --split all`` (see ``--help``).
"""

from .common import IMAGE_SIZE, log_uniform_int
from .splits import (
    CURRENT,
    DEFAULT_NUM_IMAGES,
    GENERATOR_VERSION,
    GENERATORS,
    SPLITS,
    chat_record,
    check_generator_version,
    ensure_split,
    generate_records,
    generator_of,
    iter_records,
    main,
    make_records,
    write_split,
)
from .v5 import GranularityConfigV5
from .v6 import GranularityConfig as GranularityConfigV6
from .v7 import (
    ANSWERS,
    BACKGROUND_COLORS,
    COVER_SCALES,
    DEFAULT_CONFIG,
    DIFFICULTY_ATTRIBUTES,
    FAMILIES,
    FAMILY_ATTRIBUTE,
    FRAME_COLORS,
    OBJECT_COLORS,
    PALETTE,
    QUESTIONS,
    SHIFTED_CONFIG,
    VOCABULARY,
    GranularityConfig,
    draw_sample,
)

__all__ = [
    "ANSWERS", "BACKGROUND_COLORS", "COVER_SCALES", "CURRENT", "DEFAULT_CONFIG", "DEFAULT_NUM_IMAGES",
    "DIFFICULTY_ATTRIBUTES", "FAMILIES", "FAMILY_ATTRIBUTE", "FRAME_COLORS", "GENERATORS", "GENERATOR_VERSION",
    "IMAGE_SIZE", "OBJECT_COLORS", "PALETTE", "QUESTIONS", "SHIFTED_CONFIG", "SPLITS", "VOCABULARY",
    "GranularityConfig", "GranularityConfigV5", "GranularityConfigV6", "chat_record", "check_generator_version",
    "draw_sample", "ensure_split", "generate_records", "generator_of", "iter_records", "log_uniform_int", "main",
    "make_records", "write_split",
]  # fmt: skip
