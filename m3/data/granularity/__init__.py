"""Granularity benchmark: procedural images where the image, not only the question, decides how many visual
tokens a question needs.

The current generator is version 6 (:mod:`.v6`: which colour sits in the white frame and in the black one, among a
lattice of squares whose pitch sets the scale); version 5 (:mod:`.v5`: which of two squares is left or on top) stays
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
from .v6 import (
    ANSWERS,
    BACKGROUND_COLORS,
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
    "ANSWERS", "BACKGROUND_COLORS", "CURRENT", "DEFAULT_CONFIG", "DEFAULT_NUM_IMAGES", "DIFFICULTY_ATTRIBUTES",
    "FAMILIES", "FAMILY_ATTRIBUTE", "FRAME_COLORS", "GENERATORS", "GENERATOR_VERSION", "IMAGE_SIZE",
    "OBJECT_COLORS", "PALETTE", "QUESTIONS", "SHIFTED_CONFIG", "SPLITS", "VOCABULARY", "GranularityConfig",
    "GranularityConfigV5", "chat_record", "check_generator_version", "draw_sample", "ensure_split",
    "generate_records", "generator_of", "iter_records", "log_uniform_int", "main", "make_records", "write_split",
]  # fmt: skip
