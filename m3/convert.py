"""Convert an original-layout LLaVA checkpoint into an M3 checkpoint in the llava-hf layout.

"Original layout" is haotian-liu/LLaVA's ``LlavaLlamaForCausalLM``, the layout of the released M3
checkpoints ``mucai/llava-v1.5-7b-m3`` and ``mucai/llava-next-vicuna-7b-m3``::

    model.embed_tokens.* / model.layers.N.* / model.norm.*   -> model.language_model.*
    lm_head.weight                                          -> lm_head.weight
    model.mm_projector.0.* / model.mm_projector.2.*         -> model.multi_modal_projector.linear_1.* / linear_2.*
    model.vision_tower.vision_tower.vision_model.*          -> model.vision_tower.*
    model.image_newline (LLaVA-NeXT)                        -> model.image_newline

The targets are the in-memory parameter names of our M3 classes (transformers 5.23). The model is built
on the meta device and the renamed tensors are assigned with a strict ``load_state_dict``, so a key that
does not fit fails loudly; ``save_pretrained`` then writes safetensors in whatever layout transformers
saves, and both the M3 classes and plain transformers load the result.

The original config (a llama config plus ``mm_*`` fields) decides the family: ``image_aspect_ratio ==
"anyres"`` gives LLaVA-NeXT (``M3LlavaNextConfig``), anything else LLaVA-1.5 (``M3LlavaConfig``). The CLIP
weights are often not stored in the original checkpoint; they then come from a separate CLIP checkpoint
directory (``vision_tower``), or from ``mm_vision_tower`` when that names a local directory.

The converted model behaves as the official code: its config names the ``vicuna_v1`` conversation template (the
official M3 fine-tune's), and for LLaVA-NeXT the ``image_grid_pinpoints`` pairs are swapped (the official code
reads them as (width, height), transformers as (height, width)) and ``m3_unpad_rule`` is ``official``.

The original LLaVA has no ``<image>`` token in its vocabulary (it splices images in at id -200); llava-hf
needs a real one. If the source directory has a tokenizer, ``<image>`` is added to it as a special token
when missing and saved with the model; the embedding and ``lm_head`` matrices grow to hold the new id,
the new rows set to the mean of the existing rows (the embedding row is never read: image features
replace it). Without a tokenizer the image token id must be given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, LlamaConfig

from .configuration import M3LlavaNextConfig
from .files import read_json, safetensors_header
from .modeling import MODEL_CLASSES
from .runs import check_folder_path

IMAGE_TOKEN = "<image>"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
REDOWNLOAD = "download the original checkpoint again"

VISION_PREFIX = "model.vision_tower."
EMBED_KEY = "model.language_model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
ORIGINAL_VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
# (original prefix, M3 in-memory prefix); the first match wins.
KEY_PREFIXES = (
    (ORIGINAL_VISION_PREFIX, VISION_PREFIX),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
    ("model.image_newline", "model.image_newline"),
)
# Buffers that older transformers versions saved and that are now recomputed, not loaded.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")
# Parts of a full CLIP checkpoint that the vision tower does not use.
CLIP_UNUSED_PREFIXES = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
CLIP_VISION_PARTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")

# Llama fields taken from the original config (``rope_theta``/``rope_scaling`` are the legacy rope keys).
LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "pretraining_tp",
    "tie_word_embeddings",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
)
# LLaVA fields this converter reads (others, e.g. training flags or M3 fork fields, are ignored).
LLAVA_FIELDS = (
    "architectures",
    "model_type",
    "mm_vision_tower",
    "mm_hidden_size",
    "mm_projector_type",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "mm_patch_merge_type",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "torch_dtype",
    "dtype",
)
# Vision towers named by the released LLaVA configs, for checkpoints that store the CLIP weights.
_CLIP_VIT_L14 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
    projection_dim=768,
)  # fmt: skip
KNOWN_VISION_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(_CLIP_VIT_L14, image_size=336),
    "openai/clip-vit-large-patch14": dict(_CLIP_VIT_L14, image_size=224),
}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
# The official M3 fine-tune's conversation template (scripts/v1_5/finetune.sh: --version v1).
ORIGINAL_TEMPLATE = "vicuna_v1"


# --------------------------------------------------------------------------------------------------
# Pure parts: key mapping, configs, vocabulary growth


class UnknownKeyError(KeyError, ValueError):
    """A checkpoint key the converter does not know: a ``KeyError`` to callers of the key mappings, and a user error
    (``ValueError``: one ``error:`` line, :mod:`m3.cli`) to the script. Its text is the message, unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def original_key_to_m3(key: str) -> str | None:
    """M3 in-memory name of an original LLaVA key; ``None`` for a skipped buffer.

    Raises :class:`UnknownKeyError` (a ``KeyError``) naming the key when the mapping does not know it.
    """
    if key.endswith(SKIPPED_SUFFIXES):
        return None
    for source, target in KEY_PREFIXES:
        if key.startswith(source):
            return target + key[len(source) :]
    raise UnknownKeyError(
        f"unknown key {key!r} in the original LLaVA checkpoint; the converter knows "
        f"{', '.join(source + '*' for source, _ in KEY_PREFIXES)}"
    )


def clip_key_to_m3(key: str) -> str | None:
    """M3 in-memory name of a key of a CLIP checkpoint; ``None`` for parts the vision tower does not use.

    Accepts full CLIP checkpoints (``vision_model.*`` next to ``text_model.*``), ``CLIPVisionModel`` saved by
    older transformers (``vision_model.*``) and by transformers 5 (``embeddings.*``, ``encoder.*``, ...).
    """
    if key.startswith(CLIP_UNUSED_PREFIXES) or key.endswith(SKIPPED_SUFFIXES):
        return None
    rest = key.removeprefix("vision_model.")
    if not rest.startswith(CLIP_VISION_PARTS):
        raise UnknownKeyError(f"unknown key {key!r} in the CLIP vision checkpoint")
    return VISION_PREFIX + rest


def rename_state_dict(state_dict: dict[str, torch.Tensor], rename) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply ``rename`` (a key function returning a new name or ``None``) -> (renamed dict, skipped keys)."""
    renamed, skipped = {}, []
    for key, tensor in state_dict.items():
        new_key = rename(key)
        if new_key is None:
            skipped.append(key)
        elif new_key in renamed:
            raise ValueError(f"two keys map to {new_key!r}; the second is {key!r}")
        else:
            renamed[new_key] = tensor
    return renamed, skipped


def check_original_config(config: dict, source: str = "config.json") -> None:
    """Raise ``ValueError`` unless ``config`` is an original (haotian-liu/LLaVA) llama-based LLaVA config."""
    if "text_config" in config or "vision_config" in config:
        raise ValueError(
            f"{source} has text_config/vision_config: it is already a llava-hf config, not an original LLaVA "
            "one; load that checkpoint directly (m3.loading.load_m3_model)"
        )
    if "mm_vision_tower" not in config:
        raise ValueError(f"{source} has no mm_vision_tower: not an original LLaVA (LlavaLlamaForCausalLM) config")
    architectures = config.get("architectures") or list(ORIGINAL_ARCHITECTURES)
    unsupported = [name for name in architectures if name not in ORIGINAL_ARCHITECTURES]
    if unsupported:
        raise ValueError(f"{source} has architectures {unsupported}; only {list(ORIGINAL_ARCHITECTURES)} is supported")
    if config.get("mm_use_im_start_end") or config.get("mm_use_im_patch_token"):
        raise ValueError(
            f"{source} sets mm_use_im_start_end/mm_use_im_patch_token; llava-hf has no image start/end/patch tokens"
        )


def family_of(config: dict) -> str:
    """``"llava_next"`` for an anyres (LLaVA-NeXT) config, ``"llava"`` (LLaVA-1.5) otherwise."""
    aspect = config.get("image_aspect_ratio")
    if isinstance(aspect, str) and aspect.startswith("anyres"):
        if aspect != "anyres":
            raise ValueError(f"image_aspect_ratio {aspect!r} is not supported; LLaVA-NeXT uses 'anyres'")
        return "llava_next"
    return "llava"


def text_config_from_original(config: dict) -> LlamaConfig:
    """The llama config inside an original LLaVA config (the ``mm_*`` fields left out)."""
    fields = {key: config[key] for key in LLAMA_FIELDS if key in config}
    if fields.get("rope_scaling") is None:
        fields.pop("rope_scaling", None)  # legacy null; a set value is converted to rope_parameters
    return LlamaConfig.from_dict(fields)


def vision_config_from_name(name: str) -> CLIPVisionConfig:
    """Config of a vision tower known by its hub name (for checkpoints that store the CLIP weights)."""
    if name in KNOWN_VISION_TOWERS:
        return CLIPVisionConfig(**KNOWN_VISION_TOWERS[name])
    raise ValueError(
        f"cannot tell the config of the vision tower {name!r} (mm_vision_tower): pass the CLIP checkpoint "
        "directory as vision_tower (--vision-tower DIR)"
    )


def m3_config_from_original(config: dict, vision_config: CLIPVisionConfig, image_token_index: int):
    """``M3LlavaConfig`` / ``M3LlavaNextConfig`` equivalent to an original LLaVA config."""
    check_original_config(config)
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ValueError(f"mm_projector_type {projector!r} is not supported; llava-hf has the 'mlp2x_gelu' projector")
    mm_hidden_size = config.get("mm_hidden_size", vision_config.hidden_size)
    if mm_hidden_size != vision_config.hidden_size:
        raise ValueError(
            f"mm_hidden_size is {mm_hidden_size} but the vision tower's hidden_size is {vision_config.hidden_size}: "
            "wrong vision tower config?"
        )
    select_feature = config.get("mm_vision_select_feature", "patch")
    if select_feature not in SELECT_FEATURE:
        raise ValueError(
            f"mm_vision_select_feature {select_feature!r} is not supported; expected one of {list(SELECT_FEATURE)}"
        )
    family = family_of(config)
    kwargs = dict(
        vision_config=vision_config,
        text_config=text_config_from_original(config),
        image_token_index=image_token_index,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=SELECT_FEATURE[select_feature],
    )
    if family == "llava_next":
        merge = config.get("mm_patch_merge_type", "flat")
        if merge != "spatial_unpad":
            raise ValueError(f"mm_patch_merge_type {merge!r} is not supported; llava-hf LLaVA-NeXT is 'spatial_unpad'")
        pinpoints = config.get("image_grid_pinpoints")
        if not (isinstance(pinpoints, list) and pinpoints and all(len(pair) == 2 for pair in pinpoints)):
            raise ValueError(f"image_grid_pinpoints {pinpoints!r}: expected a list of [width, height] pairs")
        kwargs["image_grid_pinpoints"] = transformers_pinpoints(pinpoints)
        kwargs["m3_unpad_rule"] = "official"
    return MODEL_CLASSES[family].config_class(m3_conversation_template=ORIGINAL_TEMPLATE, **kwargs)


def transformers_pinpoints(original: list) -> list[list[int]]:
    """The original ``image_grid_pinpoints`` for transformers: each pair swapped, in the same order.

    The official code reads every pair as (width, height), transformers as (height, width). The set of released
    resolutions is symmetric, but ties are broken by list order (e.g. [336, 672] against [672, 336] for any image
    whose sides are both at most 336 px), so unswapped pairs make transformers cut the transposed grid."""
    return [[int(pair[1]), int(pair[0])] for pair in original]


def grow_vocabulary(state_dict: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Extend the embedding and ``lm_head`` rows to ``vocab_size``; new rows are the mean existing row."""
    grown = dict(state_dict)
    for key in (EMBED_KEY, LM_HEAD_KEY):
        weight = state_dict[key]
        missing = vocab_size - weight.shape[0]
        if missing > 0:
            mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
            grown[key] = torch.cat([weight, mean.expand(missing, -1)], dim=0)
    return grown


def check_keys(state_dict: dict[str, torch.Tensor], expected: set[str], vision_hint: str = "") -> None:
    """Raise ``ValueError`` naming the keys that are missing from or unexpected in ``state_dict``."""
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if not (missing or unexpected):
        return
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    hint = vision_hint if any(key.startswith(VISION_PREFIX) for key in missing) else ""
    raise ValueError("the converted weights do not fit the M3 model; " + "; ".join(problems) + hint)


# --------------------------------------------------------------------------------------------------
# I/O: reading checkpoints, writing the converted model


def read_original_config(path: str | os.PathLike) -> dict:
    """The checked ``config.json`` of an original LLaVA checkpoint directory."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a checkpoint directory")
    config = read_json(config_file, REDOWNLOAD)
    check_original_config(config, str(config_file))
    return config


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: (sharded) ``model*.safetensors``, else ``pytorch_model*.bin``."""
    path = Path(path)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            files = [path / name for name in sorted(set(read_json(index, REDOWNLOAD)["weight_map"].values()))]
            break
    else:
        files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no weights in {path}: expected model*.safetensors or pytorch_model*.bin")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} is listed in the index of {path} but does not exist")
        if file.suffix == ".safetensors":
            safetensors_header(file, REDOWNLOAD)  # a truncated file: one line naming it, not a raw error
            part = load_file(file)
        else:
            part = torch.load(file, map_location="cpu", weights_only=True)
        duplicated = sorted(part.keys() & weights.keys())
        if duplicated:
            raise ValueError(f"{file} repeats keys of another shard: {duplicated[:5]}")
        weights.update(part)
    return weights


def resolve_dtype(dtype: str | torch.dtype | None, config: dict, weights: dict[str, torch.Tensor]) -> torch.dtype:
    """The output dtype: as given, else the original config's, else that of the checkpoint's tensors."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or config.get("torch_dtype") or config.get("dtype")
    if name is None:
        return next((tensor.dtype for tensor in weights.values() if tensor.is_floating_point()), torch.float32)
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; expected one of {list(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(path: Path, text_config: LlamaConfig):
    """The tokenizer of a checkpoint directory, or ``None`` when it holds no tokenizer files.

    ``text_config`` stands in for the directory's config.json, which AutoTokenizer would otherwise parse as a
    llava-hf config (the original one also says ``model_type: llava``).
    """
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, config=text_config)
    except Exception as error:
        raise ValueError(
            f"could not load the tokenizer in {path} ({error}); install what it needs (e.g. sentencepiece), or "
            "skip it (tokenizer=False / --no-tokenizer) and give the image token id"
        ) from error


def add_image_token(tokenizer) -> tuple[int, bool]:
    """Id of ``<image>`` in ``tokenizer``, added as a special token when missing -> (id, added)."""
    if IMAGE_TOKEN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), False
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), True


def image_processor_for(config, image_aspect_ratio: str | None):
    """The llava-hf image processor that matches the original preprocessing (CLIP mean/std, bicubic).

    LLaVA-1.5 with ``image_aspect_ratio == "pad"`` pads to a square filled with the mean colour before the
    CLIP resize; LLaVA-NeXT cuts anyres crops on ``image_grid_pinpoints``.
    """
    from transformers import LlavaImageProcessor, LlavaNextImageProcessor

    side = config.vision_config.image_size
    sizes = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    if isinstance(config, M3LlavaNextConfig):
        return LlavaNextImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints, **sizes)
    return LlavaImageProcessor(do_pad=image_aspect_ratio == "pad", **sizes)


@dataclass
class ConversionReport:
    """What :func:`convert_llava_checkpoint` did."""

    output_dir: Path
    family: str
    dtype: str
    num_tensors: int
    vision_weights_from: str
    image_token_index: int
    vocab_size: int
    added_image_token: bool
    tokenizer_saved: bool
    image_processor: str
    skipped_keys: list[str] = field(default_factory=list)
    ignored_config_keys: list[str] = field(default_factory=list)
    conversation_template: str = ORIGINAL_TEMPLATE
    original_pinpoints: list | None = None  # LLaVA-NeXT: the source's (width, height) pairs
    image_grid_pinpoints: list | None = None  # LLaVA-NeXT: the (height, width) pairs written for transformers
    unpad_rule: str | None = None

    def summary(self) -> str:
        token = "added to the tokenizer" if self.added_image_token else "already in the tokenizer"
        if not self.tokenizer_saved:
            token = "given (no tokenizer saved)"
        lines = [
            f"wrote {self.family} M3 checkpoint to {self.output_dir}: {self.num_tensors} tensors, {self.dtype}",
            f"vision tower weights from: {self.vision_weights_from}",
            f"<image> token id {self.image_token_index} ({token}); vocabulary size {self.vocab_size}",
            f"image processor: {self.image_processor}",
            f"conversation template: {self.conversation_template} (config m3_conversation_template; the official M3 "
            "fine-tune's)",
        ]
        if self.image_grid_pinpoints is not None:
            lines += [
                f"image_grid_pinpoints: the original (width, height) pairs {self.original_pinpoints} written as "
                f"(height, width) {self.image_grid_pinpoints} in config.json and preprocessor_config.json, so that "
                "transformers cuts the official crop grid",
                f"unpad rule: {self.unpad_rule} (config m3_unpad_rule; int() truncation, 0 content rows allowed, as "
                "the official code)",
            ]
        if self.skipped_keys:
            lines.append(f"skipped {len(self.skipped_keys)} unused keys, e.g. {self.skipped_keys[0]}")
        if self.ignored_config_keys:
            lines.append(f"ignored config fields: {', '.join(self.ignored_config_keys)}")
        return "\n".join(lines)


def resolve_vision_tower(
    original: dict, vision_tower: str | os.PathLike | None
) -> tuple[CLIPVisionConfig, Path | None]:
    """The vision config, and the CLIP checkpoint directory if there is one (given, or ``mm_vision_tower``)."""
    if vision_tower is None and not Path(original["mm_vision_tower"]).is_dir():
        return vision_config_from_name(original["mm_vision_tower"]), None
    vision_dir = Path(original["mm_vision_tower"] if vision_tower is None else vision_tower)
    config_file = vision_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in the vision tower directory {vision_dir}")
    model_type = read_json(config_file, REDOWNLOAD).get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(f"{config_file} has model_type {model_type!r}: not a CLIP checkpoint")
    return CLIPVisionConfig.from_pretrained(vision_dir), vision_dir


def gather_weights(source: Path, vision_dir: Path | None) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Renamed weights of ``source`` plus, when it stores none, the vision tower's -> (weights, skipped, origin)."""
    weights, skipped = rename_state_dict(load_weights(source), original_key_to_m3)
    if any(key.startswith(VISION_PREFIX) for key in weights):
        return weights, skipped, f"{source} (in the checkpoint)"
    if vision_dir is None:
        raise ValueError(
            f"{source} stores no vision tower weights ({ORIGINAL_VISION_PREFIX}*) and its mm_vision_tower is no "
            "local directory: pass a CLIP checkpoint directory as vision_tower (--vision-tower DIR, e.g. "
            "`hf download openai/clip-vit-large-patch14-336 --local-dir DIR`)"
        )
    vision_weights, vision_skipped = rename_state_dict(load_weights(vision_dir), clip_key_to_m3)
    return {**weights, **vision_weights}, skipped + vision_skipped, str(vision_dir)


def resolve_image_token(source: Path, original: dict, use_tokenizer: bool, image_token_index: int | None):
    """(tokenizer or None, ``<image>`` id, whether ``<image>`` was added to the tokenizer)."""
    tokenizer = load_tokenizer(source, text_config_from_original(original)) if use_tokenizer else None
    if tokenizer is None:
        if image_token_index is None:
            raise ValueError(
                f"no tokenizer used from {source}: give the <image> token id (image_token_index / --image-token-index)"
            )
        return None, image_token_index, False
    token_id, added = add_image_token(tokenizer)
    if image_token_index is not None and image_token_index != token_id:
        raise ValueError(f"image_token_index {image_token_index} disagrees with the tokenizer's <image> id {token_id}")
    return tokenizer, token_id, added


def convert_llava_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    vision_tower: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: bool = True,
    image_token_index: int | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert the original LLaVA checkpoint directory ``source`` into an M3 checkpoint in ``output``.

    vision_tower: a local CLIP checkpoint directory (e.g. openai/clip-vit-large-patch14-336); gives the vision
        config, and the weights when ``source`` stores none (weights stored in ``source`` win). Default:
        ``mm_vision_tower`` when it is a local directory, else a known hub name's config.
    dtype: "float32", "float16" or "bfloat16"; default: the original config's ``torch_dtype``.
    tokenizer: save the source's tokenizer (with ``<image>`` added when missing) next to the weights.
    image_token_index: the ``<image>`` id when no tokenizer is used; with a tokenizer it must agree.
    overwrite: allow a non-empty ``output`` directory.
    """
    source, output = Path(source), check_folder_path(output, "OUTPUT")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} is not empty; choose another directory or pass overwrite=True (--overwrite)")
    if output.resolve() == source.resolve():
        raise ValueError("the output directory must differ from the source directory")
    # Everything that can be checked without the weights first: loading 7B parameters takes a while.
    original = read_original_config(source)
    vision_config, vision_dir = resolve_vision_tower(original, vision_tower)
    loaded_tokenizer, image_token_index, added = resolve_image_token(source, original, tokenizer, image_token_index)
    config = m3_config_from_original(original, vision_config, image_token_index)

    weights, skipped, vision_from = gather_weights(source, vision_dir)
    target_dtype = resolve_dtype(dtype, original, weights)
    vocab_size = max(weights[EMBED_KEY].shape[0] if EMBED_KEY in weights else 0, image_token_index + 1)
    if loaded_tokenizer is not None:
        vocab_size = max(vocab_size, len(loaded_tokenizer))
    if EMBED_KEY in weights and LM_HEAD_KEY in weights:
        weights = grow_vocabulary(weights, vocab_size)
    weights = {key: value.to(target_dtype) if value.is_floating_point() else value for key, value in weights.items()}
    config.text_config.vocab_size = vocab_size
    config.dtype = target_dtype

    with torch.device("meta"):
        model = MODEL_CLASSES[config.model_type](config)
    vision_hint = "; the vision tower weights are incomplete: check the vision_tower checkpoint (--vision-tower DIR)"
    check_keys(weights, set(model.state_dict()), vision_hint)
    model.load_state_dict(weights, strict=True, assign=True)
    model.save_pretrained(output)
    if loaded_tokenizer is not None:
        loaded_tokenizer.save_pretrained(output)
    image_processor = image_processor_for(config, original.get("image_aspect_ratio"))
    image_processor.save_pretrained(output)
    next_family = config.model_type == "llava_next"

    return ConversionReport(
        output_dir=output,
        family=config.model_type,
        dtype=str(target_dtype).removeprefix("torch."),
        num_tensors=len(weights),
        vision_weights_from=vision_from,
        image_token_index=image_token_index,
        vocab_size=vocab_size,
        added_image_token=added,
        tokenizer_saved=loaded_tokenizer is not None,
        image_processor=type(image_processor).__name__,
        conversation_template=config.m3_conversation_template,
        original_pinpoints=original.get("image_grid_pinpoints") if next_family else None,
        image_grid_pinpoints=config.image_grid_pinpoints if next_family else None,
        unpad_rule=config.m3_unpad_rule if next_family else None,
        skipped_keys=skipped,
        ignored_config_keys=sorted(set(original) - set(LLAMA_FIELDS) - set(LLAVA_FIELDS)),
    )
