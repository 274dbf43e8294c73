"""Where training processes run: this machine alone, or one node of several joined by torchrun."""

from __future__ import annotations

import dagster as dg


class TrainingNodesResource(dg.ConfigurableResource):
    """The node topology `torchrun` gets; processes per node come from the training config (`nproc`).

    With `nnodes` > 1 the Dagster run launches node `node_rank` (0 by default); each other node runs
    the same command with its own `--node_rank` (see README, "Training on several nodes").
    """

    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    """host:port of node 0 (torchrun's master_addr:master_port); needed when nnodes > 1."""
