"""Do two commits train bit-identical nets? A check for a refactor that moves training code.

    python benchmarks/same_training.py OLD_COMMIT [NEW_COMMIT] [--threads N] [--data DIR]

Checks out each commit into a throwaway git worktree (without its kept nets, so every net is
trained), trains pauli_admm's MNIST Nom-NN, L2-NN and Lip-NN (ADMM with LipSDP, `paper`
settings) with that commit's code in a fresh process, the same torch thread count and an empty
cache, and compares the weights. NEW_COMMIT defaults to HEAD. The bits depend on the machine and
the thread count (a reduction splits differently), so only runs on one machine with one thread
count are compared. Exit status 0: every net bit-identical.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from lipcore.experiments import pauli_admm as pa
s = pa.settings("paper")["MNIST"]
data = pa.load_setting_data(s, sys.argv[3])
nom = pa.fit_standard(s, data, 0.0, 0, "cpu", "Nom-NN")
l2 = pa.fit_standard(s, data, s.l2, 0, "cpu", "L2-NN")
lip = pa.fit_admm(s, data, l2, s.admm, 0, "cpu", "Lip-NN")
torch.save({n.name: n.model.state_dict() for n in (nom, l2, lip)}, sys.argv[1])
"""


def train_at(commit: str, threads: int, data: str, work: Path) -> dict:
    """The three nets' weights as ``commit``'s code trains them."""
    tree, out = work / commit, work / f"{commit}.pt"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), commit], cwd=ROOT,
                   check=True)
    try:
        shutil.rmtree(tree / "figures" / "trained", ignore_errors=True)   # train, never load
        env = dict(os.environ, PYTHONPATH=str(tree), LIPCORE_PROGRESS="0",
                   LIPCORE_CACHE=str(work / f"cache-{commit}"))
        subprocess.run([sys.executable, "-c", TRAIN, str(out), str(threads), data], cwd=tree,
                       env=env, check=True)
        return torch.load(out)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=os.environ.get("LIPCORE_DATA"),
                        help="folder with mnist.npz (default $LIPCORE_DATA)")
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set LIPCORE_DATA")
    with tempfile.TemporaryDirectory() as work:
        nets = [train_at(c, args.threads, args.data, Path(work)) for c in (args.old, args.new)]
    same = True
    for name in nets[0]:
        a, b = nets[0][name], nets[1][name]
        equal = all(torch.equal(a[k], b[k]) for k in a)
        gap = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{name}: {'bit-identical' if equal else f'differs (max |dw| {gap:.3g})'}")
        same &= equal
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
