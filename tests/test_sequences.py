import numpy as np
import pytest

from minirlhf.errors import MinirlhfError
from minirlhf.sequences import pack


def test_pack_layout():
    batch = pack([[5, 6], [7]], [[1, 2, 0], [3, 0]], pad_id=9, block_size=8)
    np.testing.assert_array_equal(batch.idx, [[5, 6, 1, 2, 0], [7, 3, 0, 9, 9]])
    np.testing.assert_array_equal(batch.targets, [[-1, 1, 2, 0, -1], [3, 0, -1, -1, -1]])
    np.testing.assert_array_equal(batch.last, [4, 2])
    assert batch.response_mask.sum() == 5  # one action per response token


def test_pack_rejects_what_does_not_fit():
    with pytest.raises(MinirlhfError, match="row 1.*context is 4"):
        pack([[1], [1, 2, 3]], [[2], [4, 5]], pad_id=0, block_size=4)
    with pytest.raises(MinirlhfError, match="at least one token"):
        pack([[1]], [[]], pad_id=0, block_size=4)
