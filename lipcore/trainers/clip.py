"""CLIP: Cheap Lipschitz Training (Bungert et al. 2021, Algorithms 1 and 2).

Objective (2), with the Lipschitz constant estimated on a set of input pairs (5):

    mean loss(f(x), y) + lambda * Lip(f, X_Lip),   Lip(f, X_Lip) = max_{(u, v)} ||f(u) - f(v)|| / ||u - v||

Algorithm 1 moves every pair uphill on its quotient L(u, v) (u += tau L grad_u L, likewise v),
with one step size per pair that grows by 1.3 when a step raises the quotient and shrinks by
1.3 (and the step is undone) when it does not, as in the original code. Algorithm 2 alternates
that update with an SGD step and moves lambda by the discrepancy principle: up by d_lambda when
the training accuracy exceeds the target alpha, down otherwise, never below 0.

"Cheap": each minibatch updates only a rotating chunk of the pairs (plus the current worst pair),
and the regulariser shares one forward and backward pass with the minibatch loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .standard import l2_penalty

STEP_GROWTH = 1.3


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
                    generator: torch.Generator | None = None) -> "LipschitzSet":
        """Pairs (x, x + N(0, noise^2)): the paper's held-out images and their noisy copies."""
        v = images + noise * torch.randn(images.shape, generator=generator).to(images)
        return cls(images.clone(), v, torch.full((len(images),), float(tau)))

    def __len__(self) -> int:
        return len(self.u)

    def to(self, device) -> "LipschitzSet":
        return LipschitzSet(self.u.to(device), self.v.to(device), self.tau.to(device), self.cursor)

    def next_chunk(self, size: int, worst: int | None = None) -> torch.Tensor:
        """Indices of the next ``size`` pairs (cyclically), plus ``worst`` if given."""
        idx = torch.arange(self.cursor, self.cursor + size) % len(self)
        self.cursor = (self.cursor + size) % len(self)
        if worst is not None:
            idx = torch.unique(torch.cat([idx, torch.tensor([worst])]))
        return idx.to(self.u.device)


def adversarial_update(model: nn.Module, pairs: LipschitzSet, idx: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Algorithm 1 on the pairs ``idx`` (all if None): one adaptive ascent step per pair.

    A step is kept only if it raises the pair's quotient (checked with the same parameters);
    its step size then grows by 1.3, otherwise the pair is left as it was and its step size
    shrinks by 1.3. Returns the quotients after the update (never below those before)."""
    idx = torch.arange(len(pairs), device=pairs.u.device) if idx is None else idx
    u = pairs.u[idx].clone().requires_grad_(True)
    v = pairs.v[idx].clone().requires_grad_(True)
    before = quotients(model, u, v)
    grad_u, grad_v = torch.autograd.grad(before.sum(), [u, v])
    with torch.no_grad():
        shape = (-1,) + (1,) * (u.dim() - 1)
        scale = (pairs.tau[idx] * before).view(shape)
        u_new, v_new = u + scale * grad_u, v + scale * grad_v
        after = quotients(model, u_new, v_new)
        accept = after > before
        mask = accept.view(shape)
        pairs.u[idx] = torch.where(mask, u_new, u)
        pairs.v[idx] = torch.where(mask, v_new, v)
        pairs.tau[idx] = torch.where(accept, pairs.tau[idx] * STEP_GROWTH,
                                     pairs.tau[idx] / STEP_GROWTH)
        return torch.where(accept, after, before.detach())


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
    chunk: int = 16                    # pairs updated per minibatch
    squared: bool = False              # the code's squared quotient
    shuffle: bool = True

    def __post_init__(self):
        if self.regulariser not in ("clip", "weight", "none"):
            raise ValueError(f"regulariser must be 'clip', 'weight' or 'none', not {self.regulariser!r}")
        if self.update not in ("batch", "epoch"):
            raise ValueError(f"update must be 'batch' (paper) or 'epoch' (code), not {self.update!r}")
        if not 0 < self.target <= 1:
            raise ValueError(f"target is a fraction in (0, 1], got {self.target}")
        if self.lam0 < 0 or self.d_lambda < 0 or self.chunk < 1:
            raise ValueError(f"need lam0 >= 0, d_lambda >= 0, chunk >= 1; got {self}")


def clip_train(model: nn.Module, data, cfg: CLIPConfig, pairs: LipschitzSet | None = None,
               device: str = "cpu", seed: int = 0, on_epoch=None) -> dict:
    """Train ``model`` on ``data`` (a TensorDataset) with Algorithm 2.

    ``on_epoch(model, epoch) -> dict`` is called after every epoch; its dict goes into the
    history (e.g. PGD robustness on a validation set for checkpoint selection). Returns the
    history with lambda (or mu) after every epoch."""
    if cfg.regulariser == "clip" and pairs is None:
        raise ValueError("CLIP needs a LipschitzSet of input pairs (pairs=...)")
    model.to(device).train()
    pairs = pairs.to(device) if pairs is not None else None
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x_all, y_all = (t.to(device) for t in data.tensors)
    gen = torch.Generator().manual_seed(seed)
    lam, history = cfg.lam0, []
    stored_q = None
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_all), generator=gen) if cfg.shuffle else \
            torch.arange(len(x_all))
        correct = seen = 0
        total_loss = 0.0
        for i in range(0, len(x_all), cfg.batch_size):
            idx = order[i:i + cfg.batch_size].to(device)
            x, y = x_all[idx], y_all[idx]
            reg = torch.zeros((), device=device)
            if cfg.regulariser == "clip":
                worst = None if stored_q is None else int(stored_q.argmax())
                chunk = pairs.next_chunk(cfg.chunk, worst)
                adversarial_update(model, pairs, chunk)
                u, v = pairs.u[chunk], pairs.v[chunk]
                out = model(torch.cat([x, u, v]))             # one pass for loss and regulariser
                logits = out[:len(x)]
                q = pair_quotients(out[len(x):len(x) + len(u)], out[len(x) + len(u):], u, v)
                reg = lipschitz_regulariser(q, cfg.squared)
                stored_q = _remember(stored_q, len(pairs), chunk, q.detach())
            else:
                logits = model(x)
                if cfg.regulariser == "weight":
                    reg = l2_penalty(model)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            (loss + lam * reg).backward()
            opt.step()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            total_loss += loss.item() * len(y)
            if cfg.update == "batch" and cfg.regulariser != "none":
                lam = discrepancy_update(lam, correct / seen, cfg.target, cfg.d_lambda)
        if cfg.update == "epoch" and cfg.regulariser != "none":
            lam = discrepancy_update(lam, correct / seen, cfg.target, cfg.d_lambda)
        record = dict(epoch=epoch + 1, loss=total_loss / seen, train_accuracy=100 * correct / seen,
                      lam=lam, lip_estimate=float(stored_q.max()) if stored_q is not None else None)
        if on_epoch is not None:
            record.update(on_epoch(model, epoch + 1))
            model.train()
        history.append(record)
    model.eval()
    return dict(history=history, lam=lam)


def _remember(stored: torch.Tensor, n: int, idx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Keep the latest known quotient of every pair (zeros for pairs not yet visited)."""
    full = torch.zeros(n, device=q.device) if stored is None or len(stored) != n else stored
    full[idx] = q
    return full
