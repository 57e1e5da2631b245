"""CLIP: Cheap Lipschitz Training (Bungert et al. 2021, Algorithms 1 and 2).

Objective (2), with the Lipschitz constant estimated on a set of input pairs (5):

    mean loss(f(x), y) + lambda * Lip(f, X_Lip),   Lip(f, X_Lip) = max_{(u, v)} ||f(u) - f(v)|| / ||u - v||

Algorithm 1 moves every pair uphill on its quotient L(u, v) (u += tau L grad_u L, likewise v),
with one step size per pair that grows by 1.3 when a step raises the quotient and shrinks by
1.3 (and the step is undone) when it does not, as in the original code. Algorithm 2 alternates
that update with an SGD step and moves lambda by the discrepancy principle: up by d_lambda when
the training accuracy exceeds the target alpha, down otherwise, never below 0.

"Cheap": each minibatch updates only a rotating chunk of the pairs (plus the current worst pair),
and one forward pass serves the minibatch loss, Algorithm 1's acceptance test and the regulariser
(all at the same parameters); the ascent's own forward pass is reused by the backward pass of the
training step. A CLIP minibatch thus costs two forward and two backward passes instead of three
and two.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .standard import l2_penalty

STEP_GROWTH = 1.3
LOSSES = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss,
          "sse": lambda output, target: nn.functional.mse_loss(output, target, reduction="sum")}


def pair_quotients(fu: torch.Tensor, fv: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                   ) -> torch.Tensor:
    """||f(u) - f(v)|| / ||u - v|| per pair, from the outputs fu = f(u), fv = f(v)."""
    return (fu - fv).flatten(1).norm(dim=1) / (u - v).flatten(1).norm(dim=1).clamp_min(1e-12)


def quotients(model: nn.Module, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||f(u) - f(v)|| / ||u - v|| for each pair (rows of u and v)."""
    out = model(torch.cat([u, v]))
    return pair_quotients(out[:len(u)], out[len(u):], u, v)


@dataclass
class LipschitzSet:
    """Input pairs (u_i, v_i) with one ascent step size tau_i each."""

    u: torch.Tensor
    v: torch.Tensor
    tau: torch.Tensor
    cursor: int = 0

    @classmethod
    def from_images(cls, images: torch.Tensor, noise: float = 0.1, tau: float = 1.0,
                    generator: torch.Generator | None = None, kind: str = "gaussian"
                    ) -> "LipschitzSet":
        """Pairs (x, x + noise): the paper's held-out images and their noisy copies. ``kind``
        "gaussian" adds N(0, noise^2) (the paper does not say which noise); "uniform" adds
        U[0, noise), as the original code did."""
        if kind not in ("gaussian", "uniform"):
            raise ValueError(f"pair noise kind must be 'gaussian' or 'uniform', not {kind!r}")
        draw = torch.randn if kind == "gaussian" else torch.rand
        v = images + noise * draw(images.shape, generator=generator).to(images)
        return cls(images.clone(), v, torch.full((len(images),), float(tau)))

    def __len__(self) -> int:
        return len(self.u)

    def to(self, device) -> "LipschitzSet":
        """Move the pairs in place (the trainer updates the caller's set) and return it."""
        self.u, self.v, self.tau = self.u.to(device), self.v.to(device), self.tau.to(device)
        return self

    def next_chunk(self, size: int, worst: int | None = None) -> torch.Tensor:
        """Indices of the next ``size`` pairs (cyclically), plus ``worst`` if given."""
        idx = torch.arange(self.cursor, self.cursor + size) % len(self)
        self.cursor = (self.cursor + size) % len(self)
        if worst is not None:
            idx = torch.unique(torch.cat([idx, torch.tensor([worst])]))
        return idx.to(self.u.device)


def _propose(model: nn.Module, pairs: LipschitzSet, idx: torch.Tensor, keep_graph: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1's ascent proposal for the pairs ``idx``: their quotients now (with the graph
    kept if asked, so a training step can reuse this forward pass) and the moved pairs."""
    u = pairs.u[idx].clone().requires_grad_(True)
    v = pairs.v[idx].clone().requires_grad_(True)
    before = quotients(model, u, v)
    grad_u, grad_v = torch.autograd.grad(before.sum(), [u, v], retain_graph=keep_graph)
    shape = (-1,) + (1,) * (u.dim() - 1)
    scale = (pairs.tau[idx] * before.detach()).view(shape)
    return before, (u + scale * grad_u).detach(), (v + scale * grad_v).detach()


def _commit(pairs: LipschitzSet, idx: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
            u_new: torch.Tensor, v_new: torch.Tensor) -> torch.Tensor:
    """Keep each proposed pair whose quotient rose (step size x1.3), else undo it (step size
    / 1.3). Both quotients must come from the same parameters. Returns the acceptance mask."""
    with torch.no_grad():
        accept = after > before
        mask = accept.view((-1,) + (1,) * (u_new.dim() - 1))
        pairs.u[idx] = torch.where(mask, u_new, pairs.u[idx])
        pairs.v[idx] = torch.where(mask, v_new, pairs.v[idx])
        pairs.tau[idx] = torch.where(accept, pairs.tau[idx] * STEP_GROWTH,
                                     pairs.tau[idx] / STEP_GROWTH)
    return accept


def adversarial_update(model: nn.Module, pairs: LipschitzSet, idx: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Algorithm 1 on the pairs ``idx`` (all if None): one adaptive ascent step per pair.

    A step is kept only if it raises the pair's quotient (checked with the same parameters);
    its step size then grows by 1.3, otherwise the pair is left as it was and its step size
    shrinks by 1.3. Returns the quotients after the update (never below those before)."""
    idx = torch.arange(len(pairs), device=pairs.u.device) if idx is None else idx
    before, u_new, v_new = _propose(model, pairs, idx)
    before = before.detach()
    with torch.no_grad():
        after = quotients(model, u_new, v_new)
    accept = _commit(pairs, idx, before, after, u_new, v_new)
    return torch.where(accept, after, before)


def lipschitz_regulariser(q: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Lip(f, X_Lip) = max quotient (paper); ``squared=True``: the code's max squared quotient."""
    top = q.max()
    return top ** 2 if squared else top


def discrepancy_update(lam: float, accuracy: float, target: float, d_lambda: float) -> float:
    """Algorithm 2's discrepancy principle: lambda + d_lambda if accuracy > target, else
    lambda - d_lambda, never below 0 (accuracy and target as fractions or both in %)."""
    return lam + d_lambda if accuracy > target else max(lam - d_lambda, 0.0)


@dataclass
class CLIPConfig:
    """Algorithm 2. ``regulariser="clip"`` penalises lambda * Lip(f, X_Lip); ``"weight"`` is the
    paper's baseline, problem (6) with lambda = 0: mu * 1/2 ||theta||^2 with mu moved by the same
    discrepancy principle. ``lam0`` and ``d_lambda`` are the start and step of that parameter."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    regulariser: str = "clip"          # "clip", "weight" or "none"
    target: float = 0.9                # target training accuracy alpha (fraction)
    lam0: float = 0.0
    d_lambda: float = 1e-3
    update: str = "batch"              # "batch" (paper) or "epoch" (code)
    chunk: int = 16                    # pairs updated per minibatch (on average)
    ascent_every: int = 1              # Algorithm 1 on every k-th minibatch, k * chunk pairs
    squared: bool = False              # the code's squared quotient
    shuffle: bool = True
    loss: str = "cross_entropy"        # "cross_entropy"; regression: "mse" (mean) or "sse" (sum)
    optimizer: str = "sgd"             # "sgd" (with momentum, the paper's SGDM) or "adam"

    def __post_init__(self):
        if self.regulariser not in ("clip", "weight", "none"):
            raise ValueError(f"regulariser must be 'clip', 'weight' or 'none', not {self.regulariser!r}")
        if self.update not in ("batch", "epoch"):
            raise ValueError(f"update must be 'batch' (paper) or 'epoch' (code), not {self.update!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', not {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, not {self.loss!r}")
        if self.loss != "cross_entropy" and self.d_lambda > 0 and self.regulariser != "none":
            raise ValueError("the discrepancy principle compares an accuracy with its target; "
                             f"for regression (loss={self.loss!r}) fix lambda with d_lambda=0")
        if not 0 < self.target <= 1:
            raise ValueError(f"target is a fraction in (0, 1], got {self.target}")
        if self.lam0 < 0 or self.d_lambda < 0 or self.chunk < 1 or self.ascent_every < 1:
            raise ValueError(f"need lam0 >= 0, d_lambda >= 0, chunk >= 1, ascent_every >= 1; got {self}")


def clip_train(model: nn.Module, data, cfg: CLIPConfig, pairs: LipschitzSet | None = None,
               device: str = "cpu", seed: int = 0,
               on_epoch: Callable[[nn.Module, dict], dict] | None = None,
               pair_sampler: Callable[[int], LipschitzSet] | None = None) -> dict:
    """Train ``model`` on ``data`` (a TensorDataset) with Algorithm 2.

    ``on_epoch(model, record) -> dict`` is called after every epoch with that epoch's record
    (epoch, loss, train_accuracy, lam, ...); its dict goes into the history (e.g. PGD robustness
    on a validation set, for checkpoint selection).
    ``pair_sampler(epoch)`` re-draws the Lipschitz set at the start of every epoch (the paper's
    regression experiment) instead of keeping ``pairs``. Returns the history with lambda (or mu)
    after every epoch, and the final lambda."""
    if cfg.regulariser == "clip" and pairs is None and pair_sampler is None:
        raise ValueError("CLIP needs a LipschitzSet of input pairs (pairs=...)")
    model.to(device).train()
    pairs = pairs.to(device) if pairs is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum) if cfg.optimizer == "sgd" \
        else torch.optim.Adam(params, lr=cfg.lr)
    x_all, y_all = (t.to(device) for t in data.tensors)
    gen = torch.Generator().manual_seed(seed)
    lam, history = cfg.lam0, []
    stored_q = None
    classify = cfg.loss == "cross_entropy"
    moves_lam = classify and cfg.regulariser != "none"
    for epoch in range(cfg.epochs):
        if pair_sampler is not None:
            pairs, stored_q = pair_sampler(epoch).to(device), None
        order = torch.randperm(len(x_all), generator=gen) if cfg.shuffle else \
            torch.arange(len(x_all))
        correct = seen = 0
        total_loss = 0.0
        for step, i in enumerate(range(0, len(x_all), cfg.batch_size)):
            idx = order[i:i + cfg.batch_size].to(device)
            x, y = x_all[idx], y_all[idx]
            reg = torch.zeros((), device=device)
            if cfg.regulariser == "clip":
                worst = None if stored_q is None else int(stored_q.argmax())
                logits, q, chunk = _clip_forward(model, x, pairs, cfg, worst,
                                                 ascend=step % cfg.ascent_every == 0)
                reg = lipschitz_regulariser(q, cfg.squared)
                stored_q = _remember(stored_q, len(pairs), chunk, q.detach())
            else:
                logits = model(x)
                if cfg.regulariser == "weight":
                    reg = l2_penalty(model)
            loss = LOSSES[cfg.loss](logits, y)
            opt.zero_grad(set_to_none=True)
            (loss + lam * reg).backward(inputs=params)     # no gradients for the pair leaves
            opt.step()
            if classify:
                correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            total_loss += loss.item() * len(y)
            if cfg.update == "batch" and moves_lam:
                lam = discrepancy_update(lam, correct / seen, cfg.target, cfg.d_lambda)
        if cfg.update == "epoch" and moves_lam:
            lam = discrepancy_update(lam, correct / seen, cfg.target, cfg.d_lambda)
        record = dict(epoch=epoch + 1, loss=total_loss / seen, train_accuracy=100 * correct / seen if classify else None,
                      lam=lam, lip_estimate=float(stored_q.max()) if stored_q is not None else None)
        if on_epoch is not None:
            record.update(on_epoch(model, record))
            model.train()
        history.append(record)
    model.eval()
    return dict(history=history, lam=lam)


def _clip_forward(model: nn.Module, x: torch.Tensor, pairs: LipschitzSet, cfg: CLIPConfig,
                  worst: int | None, ascend: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass for the minibatch loss and the regulariser's pairs.

    With ``ascend``, the next chunk of pairs (plus the worst) first takes Algorithm 1's step;
    the same pass then tests acceptance and evaluates the updated set, and the ascent's own pass
    is reused by the training backward. Without, only the worst pair is re-evaluated. Returns
    the logits, the quotients of the evaluated pairs (with graph) and their indices."""
    if not ascend and worst is not None:
        chunk = torch.tensor([worst], device=x.device)
        u, v = pairs.u[chunk], pairs.v[chunk]
        out = model(torch.cat([x, u, v]))
        return out[:len(x)], pair_quotients(out[len(x):len(x) + 1], out[len(x) + 1:], u, v), chunk
    chunk = pairs.next_chunk(cfg.chunk * cfg.ascent_every, worst)
    before, u_new, v_new = _propose(model, pairs, chunk, keep_graph=True)
    out = model(torch.cat([x, u_new, v_new]))
    k = len(x) + len(u_new)
    after = pair_quotients(out[len(x):k], out[k:], u_new, v_new)
    accept = _commit(pairs, chunk, before.detach(), after.detach(), u_new, v_new)
    return out[:len(x)], torch.where(accept, after, before), chunk


def _remember(stored: torch.Tensor, n: int, idx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Keep the latest known quotient of every pair (zeros for pairs not yet visited)."""
    full = torch.zeros(n, device=q.device) if stored is None or len(stored) != n else stored
    full[idx] = q
    return full
