import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.cli import main
from recsys.config import TrainConfig, validate_config
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.errors import RecsysError


def _dataset() -> Dataset:
    users, items = Vocabulary([10, 20, 30]), Vocabulary([7, 8, 9, 11])
    train = Interactions.from_frame(
        pd.DataFrame({"user": [0, 0, 1, 2], "item": [0, 1, 2, 3], "rating": [4, 5, 3, 1]}),
        users, items)
    test = Interactions.from_frame(
        pd.DataFrame({"user": [0, 1], "item": [2, 0], "rating": [5, 4]}), users, items)
    return Dataset({"train": train, "test": test}, {"implicit": False, "rating_scale": [1, 5]})


def test_vocabulary_maps_both_ways_and_flags_unknown():
    v = Vocabulary([10, 20, 30])
    assert v.index(["20", 30, 99]).tolist() == [1, 2, -1]
    assert v.lookup(np.array([2, 0])).tolist() == [30, 10]
    s = Vocabulary(["a", "b"])
    assert s.index(["b", "zz"]).tolist() == [1, -1]


def test_dataset_round_trip_and_history(tmp_path):
    ds = _dataset()
    ds.save(tmp_path / "d")
    back = Dataset.load(tmp_path / "d")
    assert back.users == ds.users and back.items == ds.items
    assert (back.train.matrix != ds.train.matrix).nnz == 0
    split = back.eval_split("test")
    assert split.users.tolist() == [0, 1]
    assert split.history.toarray()[0].tolist() == [4, 5, 0, 0]
    assert back.meta["parts"]["test"]["interactions"] == 2


def test_load_of_non_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(RecsysError, match="not a prepared dataset"):
        Dataset.load(tmp_path)


def test_unknown_config_key_suggests_closest():
    with pytest.raises(RecsysError, match="unknown key 'epohcs'.*'epochs'"):
        validate_config(TrainConfig, {"epohcs": 3})


def test_interactions_shape_must_match_vocabularies():
    with pytest.raises(ValueError):
        Interactions(sp.csr_matrix((2, 2)), Vocabulary([1]), Vocabulary([1, 2]))


def test_cli_without_command_exits_2(capsys):
    assert main([]) == 2
