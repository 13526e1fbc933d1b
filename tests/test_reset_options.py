"""AcquisitionEnv.reset checks its options: known keys, a bool where a bool is meant."""

import numpy as np
import pytest

from envs.acquisition.factory import make_env


@pytest.fixture(scope="module")
def env():
    return make_env(twin_overrides={"grid": [6, 6], "n_times": 8}, reconstructor="idw")


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"initial_design": "no"}, "reset option 'initial_design' must be True or False, got 'no'"),
        ({"initial_design": 0}, "reset option 'initial_design' must be True or False, got 0"),
        ({"initial_desing": False}, "unknown reset options ['initial_desing']"),
        ([("initial_design", False)], "reset options must be a dict"),
        ("initial_design", "reset options must be a dict"),
    ],
)
def test_a_bad_reset_option_is_one_line_naming_it(env, options, says):
    with pytest.raises(ValueError) as raised:
        env.reset(seed=0, options=options)
    message = str(raised.value)
    assert says in message and "\n" not in message


def test_initial_design_false_skips_it_and_true_or_none_keep_it(env):
    _, info = env.reset(seed=0, options={"initial_design": False})
    assert info["n_measurements"] == 0
    _, with_design = env.reset(seed=0, options={"initial_design": np.bool_(True)})
    _, default = env.reset(seed=0, options=None)
    assert with_design["n_measurements"] == default["n_measurements"] > 0
