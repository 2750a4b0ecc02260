"""aL-SAR on a small digits stream with 2 CPU ranks, under DDP (torchrun) or FSDP2 (accelerate launch with
recipes/accelerate/fsdp2.yaml); tests/test_fsdp.py launches both and compares what each rank saw.

Usage: LAUNCHER tests/fsdp_scripts/alsar_ranks.py OUT_DIR
Writes OUT_DIR/rank<r>.json (per step: the batch, the frozen prefix, the gradient reduce-scatters and all-gathers
FSDP ran, whether a frozen block held a gradient at the optimizer step; at the end the ledger, the per-rank bytes and
the bytes of this rank's parameter shards) and OUT_DIR/params.pt (rank 0: the full parameters).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import digits_trainer  # noqa: E402

out = Path(sys.argv[1])
calls = {"all_gather_single": 0, "reduce_scatter_single": 0}
for name in calls:  # FSDP2 calls these through torch.distributed at call time
    original = getattr(dist, name)

    def counted(*args, _original=original, _name=name, **kwargs):
        calls[_name] += 1
        return _original(*args, **kwargs)

    setattr(dist, name, counted)

set_seed(0)  # the same random init in both runs (each run syncs its ranks to rank 0's)
trainer = digits_trainer(
    out,
    per_class_train=6,
    model="fmd5_resnet",
    method="alsar",
    freeze="adaptive",
    freeze_warmup_steps=4,
    fisher_update_every=3,
    sar_warmup_samples=30,
    learning_rate=0.01,
    ddp_backend="gloo",
    per_device_train_batch_size=4,
    memory_size=40,
    eval_period=50,
)
steps: list[dict] = []


class Spy(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        self.before = dict(calls)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        n = trainer.freezing.last_frozen
        steps.append(
            {
                "batch": list(trainer.current_record.indices),
                "frozen": n,
                "stale_grad": any(p.grad is not None for p in trainer.blocks.frozen_params(n)),
                "suffix_grads": all(p.grad is not None for p in trainer.blocks.trainable_from(n)),
                **{k: calls[k] - self.before[k] for k in calls},
            }
        )


trainer.add_callback(Spy())
trainer.train()
for module in trainer.model.modules():  # the last evaluation's forward left the root unit unsharded
    if hasattr(module, "reshard"):
        module.reshard()
params = {
    n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
    for n, p in trainer.model.named_parameters()
}
rank = dist.get_rank()
if rank == 0:
    torch.save(params, out / "params.pt")
local = [p.to_local() if hasattr(p, "to_local") else p for p in trainer.model.parameters()]
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "world_size": dist.get_world_size(),
            "fsdp": trainer.is_fsdp_enabled,
            "units": [type(m).__name__ for m in trainer.blocks.modules if m is not None],
            "steps": steps,
            "train_flops": trainer.ledger.total,
            "flops_items": trainer.ledger.items,
            "saved_fraction": trainer.ledger.backward_saved_fraction,
            "fisher": trainer.freezing.fisher.tolist(),
            "memory_bytes": trainer.results["memory_bytes"],
            "local_param_storage_bytes": sum(t.untyped_storage().nbytes() for t in local),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in trainer.model.buffers()),
        }
    )
)
