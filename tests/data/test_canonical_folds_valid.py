"""The ml-100k canonical folds get validation carved from the base file, never the test file."""

import numpy as np

from recsys.data.interactions import Dataset
from recsys.data.prepare import PrepareOptions, prepare_movielens


def test_fold_validation_comes_from_base_file_only(mirror, tmp_path):
    options = PrepareOptions(split="ml100k-u1", valid_fraction=0.1, seed=0)
    ds = prepare_movielens("ml-100k", options, mirror=str(mirror), cache=str(tmp_path),
                           progress=False)
    test_rows = np.loadtxt(tmp_path / "ml-100k" / "u1.test", dtype=np.int64)
    # Every test pair is u1.test's (a few with items unseen in u1.base are excluded).
    assert 19_900 < ds.parts["test"].nnz <= len(test_rows)
    valid, train = ds.parts["valid"].matrix, ds.train.matrix
    assert abs(valid.nnz / (valid.nnz + train.nnz) - 0.1) < 0.01
    assert valid.multiply(train).nnz == 0 and valid.multiply(ds.parts["test"].matrix).nnz == 0
    ds.save(tmp_path / "prep")
    assert Dataset.load(tmp_path / "prep").has("valid")
