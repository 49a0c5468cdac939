"""The official LLaVA-NeXT / M3 image path, re-implemented here (not imported from m3) to test the project against.

Written from the official release (github mu-cai/matryoshka-mm: ``llava/mm_utils.py`` select_best_resolution,
resize_and_pad_image, divide_to_patches, process_anyres_image; ``llava/model/llava_arch.py``
matryoshka_vis_token_process, unpad_image and the spatial_unpad packing) and /work/shared/REFERENCE.md:

* an image is ``(width, height)`` and every ``image_grid_pinpoints`` pair is ``(width, height)``; the best
  resolution maximises the effective resolution, then minimises the waste, ties going to the earlier pair;
* crops: the image resized (ceil) to fit the best resolution, pasted centred on black, cut row-major into
  ``crop`` px tiles; the base crop is the whole image resized to ``crop`` x ``crop``; every crop normalised;
* every crop's projected grid of N tokens is average-pooled with kernel = stride = ``int(sqrt(N / scale))``; the
  grid crops are laid out as (rows * k) x (cols * k), unpadded with ``int()`` truncation (which may keep 0 rows),
  every row closed with the newline embedding, and the base crop's k*k tokens go first.

``python -m tests.official_llava`` measures how often the project's token counts agree with this reference over a
grid of image sizes (before and after the converter's fixes), and how far a converted tiny LLaVA-NeXT
checkpoint's features are from it per image shape and scale.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# The released LLaVA-NeXT pinpoints, as the original configs store them: (width, height) pairs.
RELEASED_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SCALES = (1, 9, 36, 144, 576)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def best_resolution(width: int, height: int, pinpoints: Sequence[Sequence[int]], pairs: str = "wh") -> tuple[int, int]:
    """``(width, height)`` of the best pinpoint; ``pairs="hw"`` reads every pair as (height, width) instead, as
    transformers does."""
    best, best_effective, best_waste = None, 0, float("inf")
    for first, second in pinpoints:
        fit_width, fit_height = (first, second) if pairs == "wh" else (second, first)
        scale = min(fit_width / width, fit_height / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = fit_width * fit_height - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (fit_width, fit_height), effective, waste
    return best


def content_slice(current: int, original: int, original_other: int, current_other: int, rounding: bool) -> slice:
    """The cells of a letterboxed side (``current`` cells for ``original`` px) that hold content: the official
    ``tensor[padding : current - padding]``, ``padding = (current - new) // 2``, ``new = int(original * (current_other
    / original_other))``, the other side fitting exactly."""
    content = original * (current_other / original_other)
    new = int(round(content, 7)) if rounding else int(content)
    padding = (current - new) // 2
    return slice(padding, current - padding)


def unpad(tensor: torch.Tensor, width: int, height: int, rounding: bool = False) -> torch.Tensor:
    """The official ``unpad_image`` of a ``(C, H, W)`` map for an image of ``width`` x ``height`` (``rounding``:
    transformers' ``int(round(x, 7))`` instead of ``int(x)``)."""
    current_height, current_width = tensor.shape[1:]
    if width / height > current_width / current_height:
        return tensor[:, content_slice(current_height, height, width, current_width, rounding), :]
    return tensor[:, :, content_slice(current_width, width, height, current_height, rounding)]


def unpadded_size(rows: int, cols: int, width: int, height: int, rounding: bool = False) -> tuple[int, int]:
    """Rows and columns :func:`unpad` keeps of a ``rows`` x ``cols`` map."""
    if width / height > cols / rows:
        return len(range(rows)[content_slice(rows, height, width, cols, rounding)]), cols
    return rows, len(range(cols)[content_slice(cols, width, height, rows, rounding)])


def token_count(
    width: int,
    height: int,
    scale: int,
    pinpoints: Sequence[Sequence[int]] = RELEASED_PINPOINTS,
    crop: int = 336,
    grid_side: int = 24,
    pairs: str = "wh",
    rounding: bool = False,
    min_rows: int = 0,
) -> int:
    """Visual tokens of a ``width`` x ``height`` image at ``scale``: the official count by default. ``pairs="hw"``
    and ``rounding=True`` give transformers' count (pairs read as (height, width), its rounding); ``min_rows=1`` as
    well gives what the project counted before issue 23 (at least one content row or column kept)."""
    side = grid_side // int(math.sqrt(grid_side * grid_side / scale))
    fit_width, fit_height = best_resolution(width, height, pinpoints, pairs)
    rows, cols = (fit_height // crop) * side, (fit_width // crop) * side
    kept_rows, kept_cols = unpadded_size(rows, cols, width, height, rounding)
    kept_rows, kept_cols = max(kept_rows, min_rows), max(kept_cols, min_rows)
    return side * side + kept_rows * (kept_cols + 1)


def pool(crops: torch.Tensor, scale: int) -> torch.Tensor:
    """``matryoshka_vis_token_process``: ``(n, N, D)`` projected crops -> ``(n, scale, D)``."""
    count, tokens, dim = crops.shape
    side = int(tokens**0.5)
    grid = crops.view(count, side, side, dim).permute(0, 3, 1, 2)
    kernel = int(np.sqrt(tokens / scale))
    return F.avg_pool2d(grid, kernel_size=kernel, stride=kernel).permute(0, 2, 3, 1).reshape(count, -1, dim)


def pack(
    pooled: torch.Tensor, width: int, height: int, pinpoints: Sequence[Sequence[int]], crop: int, newline: torch.Tensor
) -> torch.Tensor:
    """The spatial_unpad packing of one image's pooled crops ``(1 + rows*cols, s, D)`` -> ``(tokens, D)``."""
    base, grid = pooled[0], pooled[1:]
    side = int(np.sqrt(base.shape[0]))
    fit_width, fit_height = best_resolution(width, height, pinpoints)
    cols, rows = fit_width // crop, fit_height // crop
    grid = grid.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    grid = unpad(grid, width, height)
    grid = torch.cat((grid, newline[:, None, None].expand(*grid.shape[:-1], 1)), dim=-1)
    return torch.cat((base, grid.flatten(1, 2).transpose(0, 1)), dim=0)


def normalize(image: Image.Image) -> torch.Tensor:
    pixels = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    pixels = (pixels - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def preprocess(image: Image.Image, pinpoints: Sequence[Sequence[int]], crop: int) -> torch.Tensor:
    """``process_anyres_image``: ``(1 + rows*cols, 3, crop, crop)`` normalised crops, the base image first."""
    width, height = image.size
    fit_width, fit_height = best_resolution(width, height, pinpoints)
    if fit_width / width < fit_height / height:
        new_width, new_height = fit_width, min(math.ceil(height * fit_width / width), fit_height)
    else:
        new_width, new_height = min(math.ceil(width * fit_height / height), fit_width), fit_height
    canvas = Image.new("RGB", (fit_width, fit_height), (0, 0, 0))
    canvas.paste(image.resize((new_width, new_height)), ((fit_width - new_width) // 2, (fit_height - new_height) // 2))
    tiles = [
        canvas.crop((left, top, left + crop, top + crop))
        for top in range(0, fit_height, crop)
        for left in range(0, fit_width, crop)
    ]
    return torch.stack([normalize(tile) for tile in [image.resize((crop, crop)), *tiles]])


@torch.no_grad()
def image_features(model, image: Image.Image, scale: int, pinpoints: Sequence[Sequence[int]]) -> torch.Tensor:
    """The official features of ``image`` at ``scale`` from a llava-hf layout model's own modules (vision tower,
    feature layer, patch tokens, projector, newline): the ``(tokens, D)`` the LLM would read."""
    crop = model.config.vision_config.image_size
    pixels = preprocess(image.convert("RGB"), pinpoints, crop)
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    projected = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][:, 1:])
    return pack(pool(projected, scale), *image.size, pinpoints, crop, model.model.image_newline)


# --------------------------------------------------------------------------------------------------
# Measurements for the notes (python -m tests.official_llava)


def released_config(pinpoints: list, unpad_rule: str):
    """An M3 LLaVA-NeXT config at the released geometry (336 px crops, 14 px patches: 24x24 grids)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from m3.tiny import build_tiny_tokenizer, m3_config

    tokenizer = build_tiny_tokenizer()
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, num_attention_heads=4)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4)
    return m3_config("llava_next", vision, text, tokenizer, pinpoints, m3_unpad_rule=unpad_rule)


def count_agreement(step: int = 7, low: int = 8, high: int = 2200) -> dict:
    """(size, scale) cases whose project token count differs from the official one, over every (width, height) in
    ``range(low, high + 1, step)`` squared, for the two kinds of checkpoint: a llava-hf config (the released
    pinpoints as transformers reads them, the ``transformers`` rule) and a converted one (the converter's swapped
    pinpoints, the ``official`` rule); each mismatch is put down to the crop grid or else to the rounding."""
    from m3.convert import transformers_pinpoints
    from m3.prompting import image_token_counts

    sizes = [(height, width) for width in range(low, high + 1, step) for height in range(low, high + 1, step)]
    configs = {
        "llava-hf": (released_config(RELEASED_PINPOINTS, "transformers"), "hw"),
        "converted": (released_config(transformers_pinpoints(RELEASED_PINPOINTS), "official"), "wh"),
    }
    result = {"cases": len(sizes) * len(SCALES)}
    for name, (config, pairs) in configs.items():
        causes = {"mismatches": 0, "transposed_grid": 0, "rounding": 0, "other": 0}
        for scale in SCALES:
            ours = image_token_counts(config, scale, image_sizes=sizes)
            for (height, width), count in zip(sizes, ours):
                if count == token_count(width, height, scale):
                    continue
                causes["mismatches"] += 1
                if best_resolution(width, height, RELEASED_PINPOINTS, pairs) != best_resolution(
                    width, height, RELEASED_PINPOINTS
                ):
                    causes["transposed_grid"] += 1
                elif token_count(width, height, scale, rounding=True) == count:
                    causes["rounding"] += 1
                else:
                    causes["other"] += 1
        result[name] = causes
    return result


SHAPES = {  # (width, height)
    "small 48x48": (48, 48),
    "small 49x49": (49, 49),  # 49 * (1 / 49) < 1: the official truncation keeps 0 rows at 1 token, rounding 2
    "square 150x150": (150, 150),
    "tall 60x250": (60, 250),
    "wide 250x60": (250, 60),
    "elongated 1500x60": (1500, 60),
    "elongated 60x1500": (60, 1500),
}


def random_picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def feature_differences(model_dir, original_pinpoints: list, overrides: dict | None = None) -> list[dict]:
    """Per shape and scale: the token counts of the converted model at ``model_dir`` (loaded with ``overrides``) and
    of the official path, and the largest absolute feature difference when the counts agree."""
    from m3.loading import load_m3_model
    from m3.processing import M3Processor

    overrides = overrides or {}
    pinpoints = overrides.get("image_grid_pinpoints")
    model = load_m3_model(model_dir, **overrides).eval()
    processor = M3Processor.from_pretrained(model_dir, config=model.config, image_grid_pinpoints=pinpoints)
    rows = []
    for index, (name, (width, height)) in enumerate(SHAPES.items()):
        image = random_picture(width, height, index)
        inputs = processor.image_processor([image], return_tensors="pt")
        for scale in SCALES:
            with torch.no_grad():
                ours = model.model.get_image_features(
                    inputs["pixel_values"], inputs["image_sizes"], m3_scale=scale
                ).pooler_output[0]
            official = image_features(model, image, scale, original_pinpoints)
            same = ours.shape == official.shape
            rows.append(
                dict(
                    shape=name,
                    scale=scale,
                    ours=ours.shape[0],
                    official=official.shape[0],
                    max_abs_diff=float((ours - official).abs().max()) if same and len(ours) else None,
                )
            )
    return rows


def converted_tiny_next(folder):
    """A tiny random LLaVA-NeXT written in the original layout (pinpoints as (width, height) pairs) and converted:
    the converter's report (``output_dir``: the converted checkpoint)."""
    from m3.convert import convert_llava_checkpoint
    from m3.tiny import build_tiny_tokenizer, tiny_model

    from .test_convert import original_config, original_state_dict, write_original

    tokenizer = build_tiny_tokenizer()
    source = tiny_model("llava_next", seed=3, tokenizer=tokenizer)
    clip = f"{folder}/clip-config"
    source.config.vision_config.save_pretrained(clip)
    config = original_config(source, clip)
    written = write_original(Path(folder) / "original", original_state_dict(source), config, tokenizer)
    return convert_llava_checkpoint(written, Path(folder) / "converted")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.official_llava", description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=int, default=7, help="size grid step in px (sizes 8..2200)")
    args = parser.parse_args(argv)
    import tempfile

    from m3.tiny import TINY_GRID_PINPOINTS

    torch.set_num_threads(1)
    agreement = count_agreement(args.step)
    print(f"token counts, released pinpoints, sizes 8..2200 step {args.step}: {agreement['cases']} (size, scale) cases")
    for name in ("llava-hf", "converted"):
        print(f"  {name}: {agreement[name]}")
    with tempfile.TemporaryDirectory() as folder:
        converted = converted_tiny_next(folder).output_dir
        unswapped = {"image_grid_pinpoints": TINY_GRID_PINPOINTS, "m3_unpad_rule": "transformers"}
        for name, overrides in (("as converted", None), ("pinpoints unswapped, transformers rule", unswapped)):
            print(f"features of the converted tiny LLaVA-NeXT vs the official path, {name}:")
            print("  shape | scale | tokens ours | tokens official | max |diff|")
            for row in feature_differences(converted, TINY_GRID_PINPOINTS, overrides):
                diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
                print(f"  {row['shape']} | {row['scale']} | {row['ours']} | {row['official']} | {diff}")


if __name__ == "__main__":
    main()
