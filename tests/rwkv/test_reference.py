import numpy as np
import pytest

from edgewise.rwkv import checkpoint, reference
from tests.rwkv.conftest import reference_package, relative_error

TOKENS = [1, 5, 77, 3, 42, 200, 7, 9]


@pytest.mark.parametrize("shape", ["small", "other"])
def test_reference_matches_the_rwkv_package(checkpoints, shape):
    weights, dims = checkpoint.load(checkpoints[shape])
    params = reference.params_from(weights, dims)
    mine, state = reference.forward(params, TOKENS, None, dims)
    theirs, their_state = reference_package(checkpoints[shape]).forward(TOKENS, None)
    assert relative_error(mine, theirs.float().numpy()) < 1e-4
    # and the state carries over: one more token from each side's state
    more, _ = reference.forward(params, [11], state, dims)
    their_more, _ = reference_package(checkpoints[shape]).forward([11], their_state)
    assert relative_error(more, their_more.float().numpy()) < 1e-4
    assert np.argmax(mine) == int(theirs.argmax())
