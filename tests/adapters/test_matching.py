"""``target_modules`` matching agrees with PEFT's own ``check_target_module_exists``."""

from __future__ import annotations

import pytest
from conftest import MLP, tiny_bert

from manifold_lowrank.adapters import AdapterConfig, check_target_module_exists
from manifold_lowrank.adapters.matching import find_target_modules, get_pattern_key

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import check_target_module_exists as peft_check  # noqa: E402

CONFIGS = [
    {"target_modules": ["query", "value"]},
    {"target_modules": ["attention.self.query", "dense"]},
    {"target_modules": ["dense"], "exclude_modules": ["pooler.dense"]},
    {"target_modules": ["dense"], "exclude_modules": r".*layer\.1\..*"},
    {"target_modules": r".*\.(query|key)"},
    {"target_modules": r"encoder\.layer\.0\..*dense"},
    {"target_modules": ["dense", "classifier"], "modules_to_save": ["classifier"]},
    {"target_modules": ["lin0", "lin1"]},
    {"target_modules": ["0"]},
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_matching_equals_peft(kwargs):
    ours = AdapterConfig(**kwargs)
    theirs = peft.LoraConfig(**kwargs)
    for model in (tiny_bert(), MLP()):
        for name, _ in model.named_modules():
            if not name:
                continue
            assert check_target_module_exists(ours, name) == bool(peft_check(theirs, name)), name


def test_all_linear_equals_peft():
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    model = tiny_bert()
    ours = find_target_modules(
        model, AdapterConfig(target_modules="all-linear", task_type="SEQ_CLS")
    )
    theirs = _maybe_include_all_linear_layers(
        peft.LoraConfig(target_modules="all-linear", task_type="SEQ_CLS"), model
    ).target_modules
    assert set(ours) == set(theirs)
    assert "classifier" not in ours


def test_rank_pattern_keys_follow_peft():
    from peft.utils.other import get_pattern_key as peft_key

    keys = ["layer.0.attention.self.query", "query", r"layer\.1\..*"]
    for name, _ in tiny_bert().named_modules():
        if name:
            want = peft_key(keys, name)
            assert get_pattern_key(keys, name) == (want if want != name else None)
