"""How a torchrun rank running one of this folder's test files as a script ends (the pipeline
schedule and Megatron rank tests): every rank at a barrier (none tears its connections down
while a peer still talks to it, as agentrl.trainer.distributed.process_group does), the group
destroyed, then `os._exit(0)` without interpreter finalization: gloo work objects still holding
tensors, freed during finalization, can abort the process ("terminate called without an active
exception": 5 of 13 runs of the pipeline schedule test without the barrier; with it, none of 54
runs in a loop and then one in a fresh-clone suite run, on 2 cores)."""

from __future__ import annotations

import os
import sys


def end_rank() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
