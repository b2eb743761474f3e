r"""Federated Bernoulli-LoRA with compressed communication: QGD, MARINA, EF21.

Setting: ``n`` workers (one ``torch.distributed`` process each, gloo on CPU or nccl on
GPU) minimise ``f(W) = (1/n) Σᵢ fᵢ(W)``; worker ``i`` can only evaluate ``∇fᵢ``. Every
worker runs the same Bernoulli-LoRA step (see :mod:`manifold_lowrank.optim.bernoulli`),

.. math::  W^{t+1} = W^t − γ\, \hat H^t G^t,

with a gradient estimate ``Gᵗ`` assembled from *compressed* messages only:

QGD
    ``Gᵗ = (1/n) Σᵢ Qᵢ(∇fᵢ(Wᵗ))`` with an unbiased compressor ``Q`` (Rand-K, random
    dithering).
MARINA (Gorbunov et al. 2021)
    with probability ``q`` (and at ``t = 0``) ``Gᵗ = (1/n) Σᵢ ∇fᵢ(Wᵗ)`` (uncompressed),
    else ``Gᵗ = Gᵗ⁻¹ + (1/n) Σᵢ Qᵢ(∇fᵢ(Wᵗ) − ∇fᵢ(Wᵗ⁻¹))`` with an unbiased ``Q``.
EF21 (Richtárik et al. 2021)
    ``gᵢᵗ = gᵢᵗ⁻¹ + C(∇fᵢ(Wᵗ) − gᵢᵗ⁻¹)`` (``gᵢ⁻¹ = 0``) with a contractive ``C``
    (Top-K); ``Gᵗ = (1/n) Σᵢ gᵢᵗ`` is maintained as ``Gᵗ⁻¹ + (1/n) Σᵢ C(·)ᵢ``.

The messages are ``uint8`` payloads (:mod:`~manifold_lowrank.distributed.compressors`)
exchanged with one ``all_gather`` per step; every worker decodes all payloads and sums
them **in rank order**, so all workers compute bitwise the same ``Gᵗ``. The Bernoulli
coin, the sketches and the MARINA coin come from a generator seeded identically on all
workers (the seed is broadcast from rank 0), hence all workers hold identical weights
after every step without ever sending a weight. The compressor's shared randomness
(Rand-K's coordinate sets) is replicated on every worker from per-sender seeds, so it is
never sent either.

Communication accounting: ``last_bytes_sent`` is the payload length this worker put on
the wire in the last step (each peer receives it once in the ``all_gather``);
``bytes_sent`` is the running total; ``dense_bytes`` is the uncompressed message
``d · itemsize`` (``d`` = total number of trained weights). For QGD and EF21 every step
sends ``compressor.ratio(d) · dense_bytes``; MARINA sends ``dense_bytes`` on its
full-gradient steps (expected ``q + (1 − q)·ratio`` of dense).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist

from manifold_lowrank.distributed.compressors import Compressor, make_compressor
from manifold_lowrank.linalg import check_finite
from manifold_lowrank.optim.bernoulli import projected_updates
from manifold_lowrank.optim.sketches import SKETCH_DISTRIBUTIONS

__all__ = [
    "FEDERATED_ESTIMATORS",
    "FederatedBernoulliLoRA",
    "find_free_port",
    "launch_local",
    "replicas_identical",
]

FEDERATED_ESTIMATORS: tuple[str, ...] = ("qgd", "marina", "ef21")


def _derive_seed(seed: int, tag: int, index: int) -> int:
    """Deterministic, well-separated seeds for the per-purpose generators."""
    return (seed * 1_000_003 + tag * 7_919 + index * 104_729 + 12_345) % (2**62)


def _group_src(group: Any) -> int:
    return 0 if group is None else dist.get_global_rank(group, 0)


class FederatedBernoulliLoRA(torch.optim.Optimizer):
    r"""Bernoulli-LoRA with QGD, MARINA or EF21 gradient estimators across workers.

    Construct it in every worker after :func:`torch.distributed.init_process_group`, with
    the same arguments; ``closure`` evaluates the worker's *local* loss ``fᵢ`` and calls
    ``backward()``.

    Parameters
    ----------
    params : iterable of tensors
        Matrix-shaped weights (Linear ``(m, n)``, Conv ``(out, in, kh, kw)`` in matrix
        form). They are broadcast from rank 0 at construction (``sync_initial``).
    lr : float
        Step size ``γ > 0``.
    rank : int
        Sketch rank ``r``.
    p : float
        Probability in ``[0, 1]`` of sampling the output-side factor (``H_B``).
    estimator : {"qgd", "marina", "ef21"}
    compressor : Compressor or str
        Unbiased (:class:`~manifold_lowrank.distributed.RandK`,
        :class:`~manifold_lowrank.distributed.RandomDithering`) for QGD and MARINA;
        contractive (:class:`~manifold_lowrank.distributed.TopK`) for EF21.
    compressor_kwargs : dict, optional
        When ``compressor`` is a name, e.g. ``{"ratio": 0.1}``.
    marina_prob : float, optional
        MARINA's full-synchronisation probability ``q ∈ (0, 1]`` (required for MARINA).
    sketch : {"gaussian", "haar"}
    seed : int, optional
        Seed of all shared randomness; rank 0's value is broadcast to everyone (default:
        drawn from rank 0's global torch RNG).
    group : ProcessGroup, optional
        Communicator (default: the world).
    sync_initial : bool
        Broadcast the initial weights from rank 0.

    Attributes
    ----------
    bytes_sent, last_bytes_sent, dense_bytes : int
        Communication accounting (module docstring).
    last_step : dict
        ``coin``, ``full_sync`` (MARINA), ``bytes``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        *,
        rank: int,
        p: float = 0.5,
        estimator: Literal["qgd", "marina", "ef21"] = "qgd",
        compressor: Compressor | str,
        compressor_kwargs: dict[str, Any] | None = None,
        marina_prob: float | None = None,
        sketch: Literal["gaussian", "haar"] = "gaussian",
        seed: int | None = None,
        group: Any = None,
        sync_initial: bool = True,
    ) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive float, got {lr!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"p must be a float in [0, 1], got {type(p).__name__}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p!r}")
        if estimator not in FEDERATED_ESTIMATORS:
            raise ValueError(
                f"estimator must be one of {FEDERATED_ESTIMATORS}, got {estimator!r} "
                "(single-process estimators live in manifold_lowrank.optim.BernoulliLoRA)"
            )
        if sketch not in SKETCH_DISTRIBUTIONS:
            raise ValueError(f"sketch must be one of {SKETCH_DISTRIBUTIONS}, got {sketch!r}")
        comp = make_compressor(compressor, **(compressor_kwargs or {}))
        if estimator in ("qgd", "marina") and not comp.unbiased:
            raise ValueError(
                f"compressor must be unbiased for estimator {estimator!r} "
                f"(e.g. RandK, RandomDithering), got {comp!r}"
            )
        if estimator == "ef21" and not comp.contractive:
            raise ValueError(
                f"compressor must be contractive for estimator 'ef21' (e.g. TopK), got {comp!r}"
            )
        if estimator == "marina":
            if marina_prob is None:
                raise ValueError("marina_prob is required for estimator 'marina'")
            if isinstance(marina_prob, bool) or not isinstance(marina_prob, (int, float)):
                raise TypeError(f"marina_prob must be a float, got {type(marina_prob).__name__}")
            if not 0.0 < float(marina_prob) <= 1.0:
                raise ValueError(f"marina_prob must lie in (0, 1], got {marina_prob!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "FederatedBernoulliLoRA needs an initialised torch.distributed process group "
                "(call torch.distributed.init_process_group first, or use launch_local)"
            )
        super().__init__(params, {"lr": float(lr), "rank": rank})
        self.params_flat = [w for g in self.param_groups for w in g["params"]]
        for w in self.params_flat:
            if w.ndim < 2:
                raise ValueError(
                    "params: FederatedBernoulliLoRA acts on matrix-shaped weights (ndim >= 2), "
                    f"got a tensor of shape {tuple(w.shape)}"
                )
        first = self.params_flat[0]
        if any(w.dtype != first.dtype or w.device != first.device for w in self.params_flat):
            raise ValueError(
                "params must share one dtype and device (they are sent as one flat message)"
            )
        self.p = float(p)
        self.estimator = estimator
        self.compressor = comp
        self.marina_prob = None if marina_prob is None else float(marina_prob)
        self.sketch = sketch
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank_in_group = dist.get_rank(group)
        device = self.params_flat[0].device
        src = _group_src(group)
        seed_t = torch.tensor(
            [int(torch.randint(0, 2**62, ())) if seed is None else int(seed)],
            dtype=torch.int64,
            device=device,
        )
        dist.broadcast(seed_t, src=src, group=group)
        self.seed = int(seed_t.item())
        if sync_initial:
            with torch.no_grad():
                for w in self.params_flat:
                    dist.broadcast(w.data, src=src, group=group)
        self.shared_gen = torch.Generator().manual_seed(_derive_seed(self.seed, 1, 0))
        self.sender_gens = [
            torch.Generator().manual_seed(_derive_seed(self.seed, 2, j))
            for j in range(self.world_size)
        ]
        self.local_gen = torch.Generator().manual_seed(
            _derive_seed(self.seed, 3, self.rank_in_group)
        )
        self.dtype = self.params_flat[0].dtype
        self.d = sum(w.numel() for w in self.params_flat)
        self.dense_bytes = self.d * torch.empty((), dtype=self.dtype).element_size()
        self.bytes_sent = 0
        self.last_bytes_sent = 0
        self.t = 0
        self._G: torch.Tensor | None = None  # aggregate estimate G^{t-1}
        self._local: torch.Tensor | None = None  # MARINA: ∇f_i(W^{t-1}); EF21: g_i^{t-1}
        self.last_step: dict[str, Any] = {}

    # ------------------------------------------------------------------ communication
    def _all_gather(self, payload: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(payload) for _ in range(self.world_size)]
        dist.all_gather(out, payload, group=self.group)
        return out

    def _dense_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        msgs = self._all_gather(x.contiguous())
        total = msgs[0].clone()
        for mj in msgs[1:]:
            total += mj
        return total / self.world_size, x.numel() * x.element_size()

    def _compressed_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean of the workers' decoded messages, this worker's decoded message, bytes."""
        comp, d = self.compressor, x.numel()
        shared = [comp.shared_randomness(d, g, x.device) for g in self.sender_gens]
        payload = comp.compress(x, shared=shared[self.rank_in_group], generator=self.local_gen)
        msgs = self._all_gather(payload)
        decoded = [comp.decompress(mj, d, x.dtype, shared=sj) for mj, sj in zip(msgs, shared)]
        total = decoded[0].clone()
        for dj in decoded[1:]:
            total += dj
        return total / self.world_size, decoded[self.rank_in_group], payload.numel()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """One federated Bernoulli-LoRA step; ``closure`` computes the local loss/backward.

        Returns the local loss. Collective: every worker must call it.
        """
        if closure is None:
            raise ValueError("closure (local loss with backward) is required")
        for w in self.params_flat:
            w.grad = None
        with torch.enable_grad():
            loss = closure()
        flat = torch.cat(
            [
                (w.grad if w.grad is not None else torch.zeros_like(w)).reshape(-1)
                for w in self.params_flat
            ]
        )
        full_sync = False
        if self.estimator == "qgd":
            G, _, nbytes = self._compressed_mean(flat)
            new_local = None
        elif self.estimator == "marina":
            u = float(torch.rand((), generator=self.shared_gen))
            assert self.marina_prob is not None
            full_sync = self._G is None or u < self.marina_prob
            if full_sync:
                G, nbytes = self._dense_mean(flat)
            else:
                assert self._G is not None and self._local is not None
                delta, _, nbytes = self._compressed_mean(flat - self._local)
                G = self._G + delta
            new_local = flat
        else:  # ef21
            g_prev = self._local if self._local is not None else torch.zeros_like(flat)
            delta, own, nbytes = self._compressed_mean(flat - g_prev)
            G = delta if self._G is None else self._G + delta
            new_local = g_prev + own

        coin = bool(torch.rand((), generator=self.shared_gen) < self.p)
        grads, offset = [], 0
        for w in self.params_flat:
            grads.append(G[offset : offset + w.numel()].view_as(w))
            offset += w.numel()
        ranks = [g["rank"] for g in self.param_groups for _ in g["params"]]
        lrs = [g["lr"] for g in self.param_groups for _ in g["params"]]
        updates, _ = projected_updates(
            self.params_flat,
            grads,
            ranks=ranks,
            coin=coin,
            sketch=self.sketch,
            generator=self.shared_gen,
        )
        check_finite("FederatedBernoulliLoRA update", *updates)
        for w, u, lr in zip(self.params_flat, updates, lrs):
            w.sub_(u, alpha=lr)
        self._G = G
        if new_local is not None:
            self._local = new_local
        self.t += 1
        self.last_bytes_sent = int(nbytes)
        self.bytes_sent += int(nbytes)
        self.last_step = {"coin": coin, "full_sync": full_sync, "bytes": int(nbytes)}
        return loss


def replicas_identical(params: Iterable[torch.Tensor], group: Any = None) -> bool:
    """``True`` iff every worker holds bitwise the same values of ``params``.

    Collective (one ``all_gather`` of all weights): a check for tests and debugging,
    not for the training loop.
    """
    flat = torch.cat([w.detach().reshape(-1) for w in params])
    out = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, flat, group=group)
    return all(torch.equal(out[0], o) for o in out[1:])


def find_free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; tiny race window)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch_entry(
    local_rank: int,
    fn: Callable[..., Any],
    world_size: int,
    args: tuple,
    backend: str,
    port: int,
    out_dir: str,
    threads: int,
    timeout: float,
) -> None:
    import datetime

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    dist.init_process_group(
        backend,
        rank=local_rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        result = fn(local_rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{local_rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch_local(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    *,
    backend: Literal["gloo", "nccl"] = "gloo",
    timeout: float = 60.0,
    threads: int = 1,
    start_method: Literal["forkserver", "spawn"] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes on localhost.

    Each process is started by :mod:`torch.multiprocessing` (never by a plain ``fork``
    of the caller, whose thread pools may be live), joins a process group on
    ``127.0.0.1`` at a free port with ``backend`` and runs ``fn``; the return values
    (``torch.save``-able) come back in rank order.

    Parameters
    ----------
    fn : callable
        Importable (module-level) function.
    world_size : int
        Number of processes (``≥ 1``).
    backend : {"gloo", "nccl"}
    timeout : float
        Wall-clock bound in seconds for the whole run; the processes are terminated and
        :class:`TimeoutError` raised when it is exceeded.
    threads : int
        ``torch.set_num_threads`` in every worker.
    start_method : {"forkserver", "spawn"}, optional
        Default ``"forkserver"`` where available (the server process imports ``fn``'s
        module and this package once, then forks cheap workers from a single-threaded
        process; it is reused by later calls), else ``"spawn"``.

    Raises
    ------
    TimeoutError, RuntimeError
        On timeout, or when a worker fails (the worker's traceback is in the message).
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not timeout > 0 or not math.isfinite(timeout):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
    import multiprocessing

    if start_method is None:
        methods = multiprocessing.get_all_start_methods()
        start_method = "forkserver" if "forkserver" in methods else "spawn"
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
    if start_method == "forkserver":
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            # torch._dynamo is imported lazily by the first torch.optim.Optimizer of a
            # process; importing it once in the server saves seconds in every worker.
            ["torch", "torch._dynamo", "manifold_lowrank.distributed.federated"]
            + ([] if fn.__module__ in ("__main__", "__mp_main__") else [fn.__module__])
        )
    with tempfile.TemporaryDirectory(prefix="mlr_launch_") as out_dir:
        port = find_free_port()
        ctx = mp.start_processes(
            _launch_entry,
            args=(fn, world_size, args, backend, port, out_dir, threads, timeout),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"launch_local: {world_size} workers did not finish within {timeout} s"
                    )
        except ProcessException as exc:
            raise RuntimeError(f"launch_local: a worker failed:\n{exc}") from None
        finally:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
        return [
            torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
