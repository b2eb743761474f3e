r"""transformers integration: :class:`GeoLoRACallback` (a ``TrainerCallback``).

This module imports transformers; :mod:`manifold_lowrank.adapters` exposes
``GeoLoRACallback`` lazily, so importing the adapters package does not.

Instead of a forked ``Trainer`` (as in the GeoLoRA authors' code), a callback runs the
GeoLoRA step after the Trainer's own optimizer step (``on_optimizer_step``: after
backward and gradient accumulation, before ``zero_grad``). The Trainer's optimizer keeps
training every *other* trainable parameter (the classifier head in
``modules_to_save``); at ``on_train_begin`` the callback removes the adapter factors from
the Trainer's optimizer, so AdamW never touches (nor decays) ``U``, ``S``, ``V``.

Notes
-----
* The Trainer's gradient clipping (``max_grad_norm``) acts on ``.grad`` only; GeoLoRA
  uses the projected gradients, which are not clipped. Use
  ``precondition="factored"`` (or ``"layer_rms"``) for a step length independent of the
  gradient scale.
* With ``follow_schedule=True`` (default) GeoLoRA's learning rate follows the Trainer's
  schedule: ``lr_t = lr · (trainer lr_t / args.learning_rate)``.
* If training ends and no GeoLoRA step ran, a warning is emitted (PEFT issue #1327: the
  AdaLoRA allocator silently never ran under the Trainer).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn
from transformers import TrainerCallback

from manifold_lowrank.optim.geolora import GeoLoRA

__all__ = ["GeoLoRACallback"]


class GeoLoRACallback(TrainerCallback):
    """Run :class:`~manifold_lowrank.optim.GeoLoRA` inside a transformers ``Trainer``.

    Parameters
    ----------
    optimizer : GeoLoRA, optional
        An existing GeoLoRA optimizer. If omitted, one is built at ``on_train_begin`` over
        the Trainer's model with ``geolora_kwargs`` (``lr`` defaults to
        ``args.learning_rate``).
    follow_schedule : bool
        Scale GeoLoRA's learning rates with the Trainer's scheduler.
    log_ranks : bool
        Add ``adapter_params`` and ``mean_rank`` to the Trainer's logs.
    **geolora_kwargs
        Passed to :class:`~manifold_lowrank.optim.GeoLoRA` (``tau``, ``max_rank``, …).

    Examples
    --------
    >>> trainer = Trainer(model=adapted, args=args, train_dataset=ds,
    ...                   callbacks=[GeoLoRACallback(lr=1e-3, tau=0.1)])  # doctest: +SKIP
    """

    def __init__(
        self,
        optimizer: GeoLoRA | None = None,
        *,
        follow_schedule: bool = True,
        log_ranks: bool = True,
        **geolora_kwargs: Any,
    ) -> None:
        if optimizer is not None and not isinstance(optimizer, GeoLoRA):
            raise TypeError(f"optimizer must be a GeoLoRA, got {type(optimizer).__name__}")
        self.geolora = optimizer
        self.follow_schedule = bool(follow_schedule)
        self.log_ranks = bool(log_ranks)
        self._kwargs = geolora_kwargs
        self._base_lrs: list[float] = []
        self.num_steps = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model: nn.Module | None = kwargs.get("model")
        if self.geolora is None:
            if model is None:
                raise ValueError("GeoLoRACallback needs the Trainer's model to build GeoLoRA")
            kw = dict(self._kwargs)
            kw.setdefault("lr", float(args.learning_rate))
            self.geolora = GeoLoRA(model, **kw)
        ids = {id(p) for g in self.geolora.param_groups for p in g["params"]}
        opt = kwargs.get("optimizer")
        inner = getattr(opt, "optimizer", opt)
        if inner is not None:
            for g in inner.param_groups:
                g["params"] = [p for p in g["params"] if id(p) not in ids]
        self._base_lrs = [float(g["lr"]) for g in self.geolora.param_groups]

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.geolora is not None
        sched = kwargs.get("lr_scheduler")
        if self.follow_schedule and sched is not None and float(args.learning_rate) > 0:
            factor = float(sched.get_last_lr()[0]) / float(args.learning_rate)
            for g, lr in zip(self.geolora.param_groups, self._base_lrs):
                g["lr"] = lr * factor
        self.geolora.step()
        self.geolora.zero_grad()
        self.num_steps += 1

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        logs = kwargs.get("logs")
        if not self.log_ranks or self.geolora is None or logs is None:
            return
        ranks = [r for r in self.geolora.ranks().values() if isinstance(r, int)]
        extra: dict[str, Any] = {"adapter_params": self.geolora.num_adapter_parameters()}
        if ranks:
            extra["mean_rank"] = sum(ranks) / len(ranks)
        logs.update(extra)
        # the Trainer copied `logs` into the history before calling callbacks
        history = getattr(state, "log_history", None)
        if history:
            history[-1].update(extra)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.num_steps == 0:
            warnings.warn(
                "GeoLoRACallback: training ended without a single GeoLoRA step; the adapters "
                "were not trained (was the callback passed to the Trainer that trained?)",
                RuntimeWarning,
                stacklevel=2,
            )
