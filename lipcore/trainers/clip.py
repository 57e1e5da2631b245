"""CLIP: Cheap Lipschitz Training (Bungert et al. 2021, Algorithms 1 and 2).

Objective (2), with the Lipschitz constant estimated on a set of input pairs (5):

    mean loss(f(x), y) + lambda * Lip(f, X_Lip),   Lip(f, X_Lip) = max_{(u, v)} ||f(u) - f(v)|| / ||u - v||

Algorithm 1 moves every pair uphill on its quotient L(u, v) (u += tau L grad_u L, likewise v),
with one step size per pair that grows by 1.3 when a step raises the quotient and shrinks by
1.3 (and the step is undone) when it does not, as in the original code. Algorithm 2 alternates
that update with an SGD step and moves lambda by the discrepancy principle: up by d_lambda when
the training accuracy exceeds the target alpha, down otherwise, never below 0.

"Cheap": each minibatch moves only a rotating chunk of the pairs (plus the worst pair so far),
and pays for nothing it does not need. The ascent takes the input gradients of the chunk's
quotients without computing weight gradients, and tests its proposals without a graph. The
regulariser needs only the worst pair: its two rows ride along in the minibatch's own forward
and backward pass. All quotients compared or penalised at a step come from that step's
parameters. On a small net every call costs more than its arithmetic, so Algorithm 1 runs on
every 4th minibatch, on 4 chunks at once (``ascent_every``): each pair is moved as often per
epoch as with one chunk every minibatch, with a quarter of the calls (see benchmarks/).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..progress import bar
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


def quotient_gradients(fu: torch.Tensor, fv: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                       squared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs' quotients q and, in closed form, the gradient of q (of q^2 if ``squared``)
    with respect to fu; the gradient with respect to fv is its negative (0 where fu = fv).
    Seeding a backward pass with it saves the autograd nodes of the norms and the division,
    which dominate the cost of a small net's step."""
    diff = (fu - fv).flatten(1)
    length = diff.norm(dim=1)
    distance = (u - v).flatten(1).norm(dim=1).clamp_min(1e-12)
    q = length / distance
    grad = diff / (length.clamp_min(1e-12) * distance).unsqueeze(1)
    if squared:
        grad = 2 * q.unsqueeze(1) * grad
    return q, grad.view_as(fu)


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


def adversarial_update(model: nn.Module, pairs: LipschitzSet, idx: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Algorithm 1 on the pairs ``idx`` (all if None): one adaptive ascent step per pair.

    A step is kept only if it raises the pair's quotient (checked with the same parameters);
    its step size then grows by 1.3, otherwise the pair is left as it was and its step size
    shrinks by 1.3. Returns the quotients after the update (never below those before)."""
    idx = torch.arange(len(pairs), device=pairs.u.device) if idx is None else idx
    k = len(idx)
    uv = torch.cat([pairs.u[idx], pairs.v[idx]]).requires_grad_(True)
    out = model(uv)
    u, v = uv.detach()[:k], uv.detach()[k:]
    shape = (-1,) + (1,) * (u.dim() - 1)
    with torch.no_grad():
        before, seed = quotient_gradients(out[:k], out[k:], u, v)
        # q depends on u and v directly too: d/du of 1/||u - v|| gives -q (u - v) / ||u - v||^2
        squared_distance = (u - v).flatten(1).pow(2).sum(dim=1).clamp_min(1e-24)
        direct = (before / squared_distance).view(shape) * (u - v)
    (grad,) = torch.autograd.grad(out, uv, torch.cat([seed, -seed]))   # no weight gradients
    with torch.no_grad():
        scale = (pairs.tau[idx] * before).view(shape)
        u_new, v_new = u + scale * (grad[:k] - direct), v + scale * (grad[k:] + direct)
        after = quotients(model, u_new, v_new)
        accept = after > before
        mask = accept.view(shape)
        pairs.u[idx] = torch.where(mask, u_new, u)
        pairs.v[idx] = torch.where(mask, v_new, v)
        pairs.tau[idx] = torch.where(accept, pairs.tau[idx] * STEP_GROWTH,
                                     pairs.tau[idx] / STEP_GROWTH)
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
    ascent_every: int = 4              # Algorithm 1 on every k-th minibatch, on k chunks
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
    clip = cfg.regulariser == "clip"
    known_q = torch.zeros(len(pairs), device=device) if clip and pairs is not None else None
    classify = cfg.loss == "cross_entropy"
    moves_lam = classify and cfg.regulariser != "none"
    pbar = bar(cfg.epochs, f"CLIP epochs ({cfg.regulariser})")
    for epoch in range(cfg.epochs):
        if pair_sampler is not None:
            pairs = pair_sampler(epoch).to(device)
            known_q = torch.zeros(len(pairs), device=device)
        order = torch.randperm(len(x_all), generator=gen) if cfg.shuffle else \
            torch.arange(len(x_all))
        correct = seen = 0
        total_loss = 0.0
        for step, i in enumerate(range(0, len(x_all), cfg.batch_size)):
            idx = order[i:i + cfg.batch_size].to(device)
            x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)   # faster than x_all[idx]
            if clip:
                if step % cfg.ascent_every == 0:
                    chunk = pairs.next_chunk(cfg.chunk * cfg.ascent_every, int(known_q.argmax()))
                    known_q[chunk] = adversarial_update(model, pairs, chunk)
                worst = int(known_q.argmax())
                logits, pair_out, q, reg_grad = _with_pair(model, x, pairs, worst, cfg.squared)
                known_q[worst] = q
            else:
                logits = model(x)
                reg = l2_penalty(model) if cfg.regulariser == "weight" else 0.0
            loss = LOSSES[cfg.loss](logits, y)
            opt.zero_grad(set_to_none=True)
            if clip:    # lam * Lip enters as its closed-form gradient at the pair's outputs
                torch.autograd.backward([loss, pair_out], [None, lam * reg_grad])
            else:
                (loss + lam * reg).backward()
            opt.step()
            if classify:
                correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            total_loss += loss.item() * len(y)
            if cfg.update == "batch" and moves_lam:
                lam = discrepancy_update(lam, correct / seen, cfg.target, cfg.d_lambda)
        if cfg.update == "epoch" and moves_lam:
            lam = discrepancy_update(lam, correct / seen, cfg.target, cfg.d_lambda)
        record = dict(epoch=epoch + 1, loss=total_loss / seen,
                      train_accuracy=100 * correct / seen if classify else None, lam=lam,
                      lip_estimate=None if known_q is None else float(known_q.max()))
        if on_epoch is not None:
            record.update(on_epoch(model, record))
            model.train()
        history.append(record)
        pbar.set_postfix({k: f"{v:.4g}" for k, v in (("loss", record["loss"]),
                          ("acc", record["train_accuracy"]), ("lambda", lam),
                          ("Lip", record["lip_estimate"])) if v is not None}, refresh=False)
        pbar.update()
    pbar.close()
    model.eval()
    return dict(history=history, lam=lam)


def _with_pair(model: nn.Module, x: torch.Tensor, pairs: LipschitzSet, k: int, squared: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass for the minibatch and pair ``k``, so the regulariser costs two extra
    rows rather than another pass. Returns the logits, the pair's outputs (with graph), its
    quotient, and the regulariser's gradient with respect to those outputs."""
    u, v = pairs.u[k:k + 1], pairs.v[k:k + 1]
    out = model(torch.cat([x, u, v]))
    n = len(x)
    with torch.no_grad():
        q, grad = quotient_gradients(out[n:n + 1], out[n + 1:], u, v, squared)
    return out[:n], out[n:], q[0], torch.cat([grad, -grad])
