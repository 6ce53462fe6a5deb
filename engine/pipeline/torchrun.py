"""The exact ``torchrun`` command that runs a recipe on one or several machines (shown to copy)."""

from __future__ import annotations

import os
import shlex
from typing import Optional


def torchrun_command(recipe_path: os.PathLike, out: os.PathLike, nproc_per_node: int = 1, nnodes: int = 1,
                     node_rank: Optional[int] = None, master_addr: Optional[str] = None, master_port: int = 29500,
                     strategy: Optional[str] = None, teacher: Optional[str] = None, resume: bool = False,
                     python: Optional[str] = None) -> str:
    """The exact shell command to run a recipe under torchrun (what the studio shows to copy).

    One node: ``--standalone``. Several nodes: run the same command on each, with its
    ``--node-rank`` (or let the c10d rendezvous assign ranks: node_rank None).
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError("nproc_per_node and nnodes must be at least 1")
    args = ["torchrun" if python is None else f"{python} -m torch.distributed.run"]
    if nnodes == 1:
        args += ["--standalone", f"--nproc-per-node={nproc_per_node}"]
    else:
        args += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
        if node_rank is not None:
            args += [f"--node-rank={node_rank}", f"--master-addr={master_addr or 'MASTER_HOST'}",
                     f"--master-port={master_port}"]
        else:
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={master_addr or 'MASTER_HOST'}:{master_port}",
                     "--rdzv-id=lowbit"]
    args += ["-m", "engine.run", shlex.quote(str(recipe_path)), "--out", shlex.quote(str(out))]
    if resume:
        args.append("--resume")
    if strategy:
        args += ["--strategy", strategy]
    if teacher:
        args += ["--teacher", teacher]
    return " ".join(args)
