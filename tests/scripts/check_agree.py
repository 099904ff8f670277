"""Run under `torchrun --nproc_per_node 2`: ranks that found different micro-batch sizes agree on the smallest."""

import json
import sys

import torch
from accelerate import PartialState

from scaling.memory import agree_on_minimum

state = PartialState(cpu=True)
found = [700, 300][state.process_index]  # as if rank 1 had less free memory
agreed = agree_on_minimum(found, state.device)
with open(f"{sys.argv[1]}.{state.process_index}", "w") as handle:
    json.dump({"found": found, "agreed": agreed}, handle)

torch.distributed.barrier()
torch.distributed.destroy_process_group()  # before exit: gloo threads must not outlive it
