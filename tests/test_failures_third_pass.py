"""Failure behaviour, third pass (issue 31): no silent scores, no silent overwrites, every option honoured or refused.

The lmms-eval plugin's own cases need the extra and live in tests/test_lmms_eval_failures.py.
"""

import numpy as np
import pytest
from PIL import Image, ImageFile

from m3.images import BadImageError, check_image, open_rgb, to_rgb

from .damage import truncate


# ---- 2. a truncated image is refused whatever PIL's process-wide LOAD_TRUNCATED_IMAGES says (lmms-eval sets it)
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_refused_even_when_pil_is_told_to_load_truncated_images(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"noise{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as `import lmms_eval.api.task` leaves it
    with pytest.raises(BadImageError, match=f"noise{suffix} of record 3.*truncated"):
        open_rgb(path, "record 3")
    with pytest.raises(BadImageError, match="truncated"):
        check_image(path)
    with Image.open(path) as lazy, pytest.raises(BadImageError, match="doc 5: cannot decode it.*truncated"):
        to_rgb(lazy, "doc 5")  # a task's doc_to_visual that opened the file without decoding it
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
