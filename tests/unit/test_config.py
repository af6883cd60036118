"""Config validation: bad values name the field and the valid choices."""

from __future__ import annotations

import pytest

from uft.config import RunConfig, validate_config
from uft.errors import UftError


def test_defaults_are_valid():
    assert validate_config({}) == RunConfig()


@pytest.mark.parametrize("values, message", [
    ({"ssl_method": "simclrr"}, "unknown ssl_method 'simclrr'; choose one of act, barlow, byol, moco, simclr"),
    ({"encoder": "vit"}, "unknown encoder 'vit'"),
    ({"replay_rule": "random"}, "unknown replay_rule 'random'; choose one of uniform"),
    ({"replay_ratio": 1.5}, "replay_ratio: Input should be less than or equal to 1"),
    ({"finetune_steps": -1}, "finetune_steps: Input should be greater than or equal to 1"),
    ({"mix_op": "blend"}, "unknown mix_op 'blend'"),
    ({"label_shots": "1,x"}, "label_shots must be comma-separated integers"),
    ({"holistic_methods": "naive,magic"}, "unknown holistic method 'magic'"),
    ({"batch_sizee": 3}, "batch_sizee: unknown parameter"),
    ({"lr": 0}, "lr: Input should be greater than 0"),
])
def test_invalid_values(values, message):
    with pytest.raises(UftError) as e:
        validate_config(values)
    assert message in str(e.value) and "\n" not in str(e.value)
