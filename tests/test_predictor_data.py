import numpy as np
import pyarrow as pa
import pytest

from oracle_data import load_oracle
from oracle_data.synthetic import write_synthetic_oracle
from predictor import as_oracle_set, grouped_split, split_oracle

SCALES = [1, 9, 36, 144, 576]


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    return write_synthetic_oracle(tmp_path_factory.mktemp("oracle") / "syn", num_images=30, seed=0)


def test_oracle_set_from_folder_table_and_plain_table(oracle_dir):
    from_folder = as_oracle_set(oracle_dir)
    assert from_folder.scales == SCALES and len(from_folder) == 120 and from_folder.embedding_dim == 16
    assert from_folder.correct().shape == (120, 5) and from_folder.correct().dtype == bool
    np.testing.assert_array_equal(from_folder.tokens()[0], SCALES)
    assert from_folder.embeddings().shape == (120, 16)
    assert from_folder.image_features(progress=False).shape == (120, 12)
    assert set(from_folder.families.tolist()) == {"background", "position", "shape", "small_color"}

    table = load_oracle(oracle_dir)  # carries the manifest as schema metadata
    from_table = as_oracle_set(table)
    assert from_table.manifest == from_folder.manifest and from_table.image_root == from_folder.image_root

    bare = table.replace_schema_metadata(None)  # no manifest: scales from the columns, images need a root
    plain = as_oracle_set(bare)
    assert plain.scales == SCALES and plain.manifest is None
    with pytest.raises(ValueError, match="no image root"):
        plain.image_paths()
    rooted = as_oracle_set(bare, image_root=oracle_dir)
    np.testing.assert_array_equal(rooted.image_features(progress=False), from_folder.image_features(progress=False))


def test_oracle_set_from_pandas(oracle_dir):
    frame = load_oracle(oracle_dir).to_pandas()  # pandas is a dependency: no skip
    data = as_oracle_set(frame, image_root=oracle_dir)
    assert data.scales == SCALES and len(data) == 120
    np.testing.assert_array_equal(data.correct(), as_oracle_set(oracle_dir).correct())


def test_bad_oracle_inputs(oracle_dir):
    with pytest.raises(TypeError, match="expected an oracle folder"):
        as_oracle_set([1, 2, 3])
    with pytest.raises(ValueError, match="no correct_"):
        as_oracle_set(pa.table({"question": ["q"]}))
    broken = load_oracle(oracle_dir).replace_schema_metadata(None).drop_columns(["tokens_36"])
    with pytest.raises(ValueError, match=r"lacks oracle column\(s\) \['tokens_36'\]"):
        as_oracle_set(broken)
    with pytest.raises(FileNotFoundError, match="holds no oracle"):
        as_oracle_set(oracle_dir / "images")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_keeps_every_image_on_one_side(oracle_dir, seed):
    data = as_oracle_set(oracle_dir)
    train, test = grouped_split(data, test_size=0.3, seed=seed)
    assert len(train) + len(test) == len(data) and not set(train) & set(test)
    train_images, test_images = set(data.groups[train]), set(data.groups[test])
    assert not train_images & test_images
    assert len(test_images) == 9  # 30 % of 30 images
    left, right = split_oracle(data, 0.3, seed)
    assert set(left.groups) == train_images and set(right.groups) == test_images
    assert left._image_cache is data._image_cache  # subsets share the image-feature cache


def test_grouped_split_errors():
    with pytest.raises(ValueError, match="at least 2 distinct images"):
        grouped_split(["a", "a", "a"])
    with pytest.raises(ValueError, match="test_size"):
        grouped_split(["a", "b"], test_size=1.5)
