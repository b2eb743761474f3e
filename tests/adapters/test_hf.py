"""GeoLoRACallback inside a transformers Trainer (tiny BERT, offline)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

from manifold_lowrank.adapters import AdapterConfig, get_adapter_model

transformers = pytest.importorskip("transformers")


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


@pytest.fixture
def _no_shadowed_datasets(monkeypatch):
    """The suite's ``tests/`` directory is on ``sys.path`` and holds ``tests/datasets``, which
    transformers then mistakes for the optional Hugging Face ``datasets`` package."""
    import transformers.trainer as tt

    if not hasattr(getattr(tt, "datasets", None), "Dataset"):
        monkeypatch.setattr(tt, "is_datasets_available", lambda: False)


@pytest.mark.usefixtures("_no_shadowed_datasets")
def test_callback_trains_adapters_and_head(tmp_path):
    from manifold_lowrank.adapters import GeoLoRACallback

    torch.manual_seed(0)
    adapted = get_adapter_model(
        tiny_bert(),
        AdapterConfig(r=4, max_rank=8, target_modules=["query", "value"], task_type="SEQ_CLS"),
    )
    frozen = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    head = [p.detach().clone() for p in adapted.non_adapter_trainable_parameters()]
    deltas = {n: m.delta_weight().clone() for n, m in adapted.adapter_layers().items()}
    cb = GeoLoRACallback(lr=0.05, tau=0.2, max_rank=8, precondition="layer_rms")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=adapted, args=args, train_dataset=_Data(), callbacks=[cb])
    trainer.train()
    assert cb.num_steps == 4
    assert len(cb.geolora.rank_history) == 4
    adapter_ids = {id(p) for g in cb.geolora.param_groups for p in g["params"]}
    for g in trainer.optimizer.param_groups:
        assert not any(id(p) in adapter_ids for p in g["params"])
    for n, p in adapted.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for p, q in zip(adapted.non_adapter_trainable_parameters(), head):
        assert not torch.equal(p, q)
    for n, m in adapted.adapter_layers().items():
        assert not torch.equal(m.delta_weight(), deltas[n]), n
    logs = [h for h in trainer.state.log_history if "mean_rank" in h]
    assert logs and logs[-1]["adapter_params"] == adapted.num_adapter_parameters()


def test_callback_warns_when_no_step_ran():
    from manifold_lowrank.adapters import GeoLoRACallback

    cb = GeoLoRACallback(lr=0.1)
    with pytest.warns(RuntimeWarning, match="without a single GeoLoRA step"):
        cb.on_train_end(None, None, None)
