"""Find the freezable blocks of a model, in forward order.

A block partition is: an optional *stem* group (everything trainable registered before the first block:
CNN stem, ViT patch/position embeddings, a trainable VLM vision tower + projector + token embeddings), then
one block per residual or transformer block, then the *head* (everything trainable registered after the last
block: final norm, pooler, classifier or lm_head), which is never frozen.

Blocks are found generically: the repeated-module containers (``nn.ModuleList``/``nn.Sequential`` whose
children share one class) are expanded down to the finest level at which blocks repeat, so HF ResNet gives its
basic layers, ViT its encoder layers and a decoder LM its decoder layers. For vision-language models only the
language model's decoder layers become blocks. Parameters are assigned to blocks by module identity, never by
name substring (``layers.1`` must not catch ``layers.10``), and every trainable parameter lands in exactly
one group. With PEFT LoRA the trainable parameters of a block are its adapter tensors (DoRA adds its magnitude
vectors, which live in the same wrapped layers). A peft ``modules_to_save`` module is trained as a full copy inside
its wrapper, at the original module's place, so it belongs where that module does: ``lm_head`` or a classifier to
the head, the embeddings or a VLM projector to the stem, a layer's norm to that layer's block (``describe`` says).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..utils.errors import ConfigError

_LANGUAGE_MODEL_KEYS = ("language_model", "text_model")


@dataclass
class BlockPartition:
    """Ordered freezable blocks; ``params[i]`` are the trainable parameters of block ``i``."""

    names: list[str]
    params: list[list[nn.Parameter]]
    modules: list[nn.Module | None]  # None for the stem group, which may span several modules
    head_params: list[nn.Parameter] = field(default_factory=list)
    head_names: list[str] = field(default_factory=list)
    param_names: list[list[str]] = field(default_factory=list)  # names of params[i], for describe()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def max_frozen(self) -> int:
        """Largest freezable prefix: all blocks if the head trains, else all but the last one."""
        return len(self.names) if self.head_params else max(len(self.names) - 1, 0)

    def trainable_from(self, n_frozen: int) -> list[nn.Parameter]:
        """Parameters that receive gradients when the first ``n_frozen`` blocks are frozen."""
        out = [p for block in self.params[n_frozen:] for p in block]
        return out + list(self.head_params)

    def frozen_params(self, n_frozen: int) -> list[nn.Parameter]:
        return [p for block in self.params[:n_frozen] for p in block]


def _repeated_children(module: nn.Module) -> list[nn.Module] | None:
    """Children of a container that repeats one block class with learnable content, else None."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return None
    children = list(module.children())
    if len(children) < 2 or len({type(c) for c in children}) != 1:
        return None
    if not any(True for _ in children[0].children()):  # a Sequential of plain layers is not a block list
        return None
    return children


def _expand_blocks(container_children: list[nn.Module]) -> list[nn.Module]:
    """Expand to the finest repeated level (a stage into its residual blocks), but only through pure wrappers:
    a block that owns weights outside its inner repeated list (a shortcut, a norm) stays one block, and a list of
    plain conv+norm+activation units inside a residual block is not a list of blocks."""
    blocks: list[nn.Module] = []
    for child in container_children:
        inner = [b for lst in _find_block_lists(child) for b in lst]
        covered = sum(p.numel() for b in inner for p in b.parameters())
        composite = bool(inner) and any(any(True for _ in c.children()) for c in inner[0].children())
        is_wrapper = composite and covered == sum(p.numel() for p in child.parameters())
        blocks.extend(_expand_blocks(inner) if is_wrapper else [child])
    return blocks


def _find_block_lists(root: nn.Module) -> list[list[nn.Module]]:
    """Outermost repeated containers below ``root`` (not nested in another one)."""
    found: list[list[nn.Module]] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            repeated = _repeated_children(child)
            if repeated is not None:
                found.append(repeated)
            else:
                visit(child)

    visit(root)
    return found


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP / accelerate wrappers
    get_base = getattr(model, "get_base_model", None)  # PEFT
    return get_base() if callable(get_base) else model


def find_blocks(model: nn.Module) -> BlockPartition:
    """Partition the trainable parameters of ``model`` into stem, ordered blocks and head."""
    base = _unwrap(model)
    names_of = {m: n for n, m in base.named_modules()}
    candidate_roots = [m for n, m in base.named_modules() if n.split(".")[-1] in _LANGUAGE_MODEL_KEYS]
    lists = [lst for root in (candidate_roots or [base]) for lst in _find_block_lists(root)]
    if not lists:
        raise ConfigError(f"could not find repeated blocks in {type(base).__name__}; pass the blocks explicitly")

    def numel(lst: list[nn.Module]) -> int:
        return sum(p.numel() for m in lst for p in m.parameters())

    block_modules = _expand_blocks(max(lists, key=numel))  # the backbone: the repeated list with most weights

    owner: dict[int, int] = {}
    for i, block in enumerate(block_modules):
        for p in block.parameters():
            owner[id(p)] = i

    stem, head, head_names, stem_names = [], [], [], []
    per_block: list[list[nn.Parameter]] = [[] for _ in block_modules]
    block_names: list[list[str]] = [[] for _ in block_modules]
    seen_block = False
    for name, p in base.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in owner:
            per_block[owner[id(p)]].append(p)
            block_names[owner[id(p)]].append(name)
            seen_block = True
        elif not seen_block:
            stem.append(p)
            stem_names.append(name)
        else:
            head.append(p)
            head_names.append(name)

    names = [names_of[m] for m in block_modules]
    params, modules = per_block, list(block_modules)
    if stem:
        names, params, modules = ["stem", *names], [stem, *params], [None, *modules]
        block_names = [stem_names, *block_names]
    keep = [i for i, ps in enumerate(params) if ps]  # blocks with nothing trainable cannot be frozen
    partition = BlockPartition(
        names=[names[i] for i in keep],
        params=[params[i] for i in keep],
        modules=[modules[i] for i in keep],
        head_params=head,
        head_names=head_names,
        param_names=[block_names[i] for i in keep],
    )
    _check_partition(base, partition)
    return partition


def _check_partition(model: nn.Module, partition: BlockPartition) -> None:
    assigned = [id(p) for ps in partition.params for p in ps] + [id(p) for p in partition.head_params]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    if sorted(assigned) != sorted(trainable) or len(set(assigned)) != len(assigned):
        raise RuntimeError("block partition does not assign every trainable parameter exactly once")


def block_parameter_bytes(partition: BlockPartition) -> list[int]:
    return [sum(p.numel() * p.element_size() for p in ps) for ps in partition.params]


_SAVED_COPY = ".modules_to_save."  # peft's ModulesToSaveWrapper keeps the trained copy under this name


def saved_modules(param_names: list[str]) -> list[str]:
    """The peft ``modules_to_save`` modules whose trained copies these parameters are (``model.lm_head`` ...)."""
    return sorted({n.split(_SAVED_COPY)[0] for n in param_names if _SAVED_COPY in n})


def describe(partition: BlockPartition) -> str:
    """One line per block (parameter count; the ``modules_to_save`` it holds: a full copy, frozen with its block)."""
    counts = [sum(p.numel() for p in ps) for ps in partition.params]
    head = sum(p.numel() for p in partition.head_params)
    names = partition.param_names or [[] for _ in partition.names]
    lines = []
    for i, (name, n, pnames) in enumerate(zip(partition.names, counts, names)):
        saved = saved_modules(pnames)
        lines.append(
            f"  {i:>2} {name:<50} {n:>10,d} params" + (f"  modules_to_save: {', '.join(saved)}" * bool(saved))
        )
    saved = saved_modules(partition.head_names)
    head_line = f"  head {'(' + ', '.join(partition.head_names[:3]) + ')':<48} {head:>10,d} params"
    return "\n".join(lines + [head_line + (f"  modules_to_save: {', '.join(saved)}" * bool(saved))])
