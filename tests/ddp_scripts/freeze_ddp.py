"""Run under torchrun with 2 CPU processes: adaptive freezing on a small digits stream; dump what each rank saw."""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import digits_trainer  # noqa: E402

out = Path(sys.argv[1])
trainer = digits_trainer(
    out,
    per_class_train=12,
    model="fmd5_resnet",
    freeze="adaptive",
    freeze_warmup_steps=4,
    fisher_update_every=3,
    ddp_backend="gloo",
    per_device_train_batch_size=4,
    eval_period=40,
)
decisions, batches, loss_pairs = [], [], []
decide, pop, compute_loss = trainer.freezing.decide, trainer.stream_sampler.pop_record, trainer.compute_loss


def spy_decide(*args):
    n = decide(*args)
    decisions.append(n)
    return n


def spy_pop():
    record = pop()
    batches.append(list(record.indices))
    return record


def spy_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
    loss, outputs = compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
    if trainer.method_context.in_training_pass:  # the loss trained on, next to the local batch mean
        own = torch.nn.functional.cross_entropy(outputs["logits"], inputs["labels"])
        loss_pairs.append((loss.item(), own.item()))
    return (loss, outputs) if return_outputs else loss


trainer.freezing.decide, trainer.stream_sampler.pop_record = spy_decide, spy_pop
trainer.compute_loss = spy_compute_loss
trainer.train()
params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]).numpy().tobytes()
rank = dist.get_rank()
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "world_size": dist.get_world_size(),
            "decisions": decisions,
            "batches": batches,
            "loss_pairs": loss_pairs,
            "params_sha": hashlib.sha256(params).hexdigest(),
            "curve": [p.accuracy for p in trainer.curve],
            "train_flops": trainer.ledger.total,
            "fisher": trainer.freezing.fisher.tolist(),
        }
    )
)
