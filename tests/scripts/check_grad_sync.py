"""Run under `torchrun --nproc_per_node 2`: are gradients synchronized only on the last micro-step?

After each micro-step's backward the flattened gradients of both ranks are gathered; the main process
writes, per micro-step, whether the ranks hold identical gradients, to the JSON file named in argv[1].
"""

import json
import sys

import torch
from accelerate import Accelerator

from scaling.models import CNN1D
from scaling.train.step import optimizer_step

MICRO_STEPS = 3

accelerator = Accelerator(cpu=True, gradient_accumulation_steps=MICRO_STEPS)
torch.manual_seed(0)
model = CNN1D()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)

generator = torch.Generator().manual_seed(100 + accelerator.process_index)  # different data per rank
batches = [(torch.randn(8, 40, generator=generator), torch.randint(0, 10, (8,), generator=generator))
           for _ in range(MICRO_STEPS)]
records = []


def observe(index: int, synced: bool) -> None:
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    both = accelerator.gather(grads.unsqueeze(0))
    records.append({
        "micro_step": index,
        "sync_gradients": synced,
        "ranks_equal": bool(torch.allclose(both[0], both[1], rtol=0, atol=1e-7)),
    })


for _ in range(2):  # two optimizer steps: the pattern must repeat
    optimizer_step(accelerator, model, optimizer, batches, after_backward=observe)
    records.append({"after_step_grads_cleared": all(p.grad is None for p in model.parameters())})

params = torch.cat([p.detach().flatten() for p in model.parameters()]).unsqueeze(0)
gathered = accelerator.gather(params)
if accelerator.is_main_process:
    records.append({"params_equal": bool(torch.equal(gathered[0], gathered[1]))})
    with open(sys.argv[1], "w") as handle:
        json.dump(records, handle)

torch.distributed.barrier()
torch.distributed.destroy_process_group()  # before exit: gloo threads must not outlive it
