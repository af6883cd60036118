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


def test_builtin_name_lists_match_the_registries():
    """config checks built-in names without importing torch: its lists must be the registries'."""
    from uft.config import BUILTIN_ENCODERS, BUILTIN_HOLISTIC_METHODS, BUILTIN_SSL_METHODS
    from uft.models.encoders import encoder_names
    from uft.ssl.base import method_names
    from uft.transfer.holistic import ADAPTERS

    assert sorted(BUILTIN_ENCODERS) == encoder_names()
    assert sorted(BUILTIN_SSL_METHODS) == method_names()
    assert list(BUILTIN_HOLISTIC_METHODS) == list(ADAPTERS)  # every name config accepts has an adapter


def test_default_config_is_checked_without_importing_torch():
    """`uft run` checks its config before it starts anything: built-in names must not cost a torch import."""
    import subprocess
    import sys

    code = ("import sys; from uft.config import validate_config; "
            "validate_config({'ssl_method': 'act', 'encoder': 'resnet18', 'holistic_methods': 'adabn,oracle'}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
