#!/usr/bin/env python
"""GPU check: QLoRA (NF4 base, bf16 compute) and bf16 LoRA on a real-size LLaVA built from config, tokens/s with
freezing off and on.

No download: the architecture (CLIP ViT-L/14-336 + a Llama decoder of 7B or 1B shape) is built from its config with
random weights on the GPU, saved, and loaded back through the recipe's own path (``prepare_model``: ``load_vlm`` with
``BitsAndBytesConfig``, device map, ``prepare_model_for_kbit_training``, peft's ``LoraConfig``). Each path then trains
``--steps`` ER iterations through ``BudgetedCLTrainer`` on synthetic image-question rows, with ``freeze none``,
``static:<half the blocks>`` and ``adaptive``; the steps after ``--warmup`` are timed (CUDA-synchronised).

    python scripts/gpu_check_qlora.py                    # 7B decoder (LLaVA-1.5-7B shape), both paths
    python scripts/gpu_check_qlora.py --size 1b --steps 20
    python scripts/gpu_check_qlora.py --size tiny        # the script's own smoke run, on CPU too

Exits 2 at once, before building anything, when a real size is asked for and there is no CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

# (vision: hidden, layers, heads, intermediate, image, patch) and (decoder: hidden, layers, heads, kv heads,
# intermediate, vocab)
SIZES = {
    "7b": ((1024, 24, 16, 4096, 336, 14), (4096, 32, 32, 32, 11008, 32064)),  # LLaVA-1.5-7B
    "1b": ((1024, 24, 16, 4096, 336, 14), (2048, 16, 32, 8, 8192, 32064)),  # CLIP-L + a Llama-3.2-1B-shaped decoder
    "tiny": ((32, 1, 2, 64, 32, 8), (32, 2, 2, 1, 64, 512)),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="7b", help="decoder shape (tiny: a smoke run, CPU allowed)")
    parser.add_argument("--paths", nargs="+", choices=("qlora", "lora_bf16"), default=["qlora", "lora_bf16"])
    parser.add_argument("--steps", type=int, default=24, help="training iterations per (path, freeze) run")
    parser.add_argument("--warmup", type=int, default=6, help="first iterations not timed (FLOP profiling, warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size")
    parser.add_argument("--lora_r", type=int, default=16)
    return parser.parse_args(argv)


def require_cuda(size: str) -> None:
    import torch

    if size != "tiny" and not torch.cuda.is_available():
        print(
            "gpu_check_qlora: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was built or run. "
            "Use --size tiny for a CPU smoke run of the script itself.",
            file=sys.stderr,
        )
        sys.exit(2)


def synthetic_rows(n: int, image_size: int, seed: int = 0):
    """``n`` image-question-answer rows over 3 concepts, all of one token length (a fixed batch shape)."""
    import numpy as np
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    colours, shapes = ["red", "blue", "green"], ["circle", "square", "triangle"]
    rows = {"image": [], "question": [], "answer": [], "concept": [], "label": []}
    for i in range(n):
        concept = i * 3 // n  # concept-incremental: thirds of the stream
        pixels = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
        rows["image"].append(PILImage.fromarray(pixels))
        rows["question"].append("what colour is the shape ?" if concept != 1 else "what shape is in the image ?")
        rows["answer"].append(colours[i % 3] if concept != 1 else shapes[i % 3])
        rows["concept"].append(["colour", "shape", "colour2"][concept])
        rows["label"].append(concept)
    return Dataset.from_dict(rows).cast_column("image", Image())


def build_base(size: str, corpus: list[str], path: str, device: str) -> int:
    """A random-weight LLaVA of ``size`` saved into ``path`` (bf16 on GPU); returns its decoder block count."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from hf_budgetcl.models.tiny_vlm import LLAVA_CHAT_TEMPLATE, train_bpe_tokenizer

    (v_hidden, v_layers, v_heads, v_inter, image, patch), (hidden, layers, heads, kv, inter, vocab) = SIZES[size]
    tok = train_bpe_tokenizer([*corpus, "USER: ASSISTANT:"], vocab_size=512)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image}, crop_size={"height": image, "width": image}
        ),
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=v_hidden,
            num_hidden_layers=v_layers,
            num_attention_heads=v_heads,
            intermediate_size=v_inter,
            image_size=image,
            patch_size=patch,
        ),
        text_config=LlamaConfig(
            vocab_size=max(vocab, len(tok)),  # the real embedding size; rows past the tokenizer stay unused
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tok.pad_token_id,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return layers


class StepTimer:
    """Wall-clock of the training steps after the first ``warmup`` (CUDA-synchronised)."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.mark(state.global_step, begin=True)

            def on_step_end(self, args, state, control, **kwargs):
                timer.mark(state.global_step, begin=False)

        self.warmup, self.seconds, self.steps, self._start = warmup, 0.0, 0, None
        self.callback = Callback()

    def mark(self, step: int, begin: bool) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if begin:
            self._start = time.perf_counter()
        elif self._start is not None and step > self.warmup:
            self.seconds += time.perf_counter() - self._start
            self.steps += 1


def run_one(model, processor, train, freeze: str, args, out: str, bf16: bool) -> dict:
    import numpy as np
    import torch

    from hf_budgetcl.config import BudgetedCLConfig
    from hf_budgetcl.data.vlm_collator import VLMInstructionCollator
    from hf_budgetcl.data.vqa import vqa_sample_nbytes
    from hf_budgetcl.stream.orders import disjoint_stream
    from hf_budgetcl.training.trainer import BudgetedCLTrainer

    config = BudgetedCLConfig(
        output_dir=out,
        method="er",
        freeze=freeze,
        freeze_warmup_steps=3,
        fisher_update_every=4,
        per_device_train_batch_size=args.batch,
        memory_size=4 * args.batch,
        eval_period=10**9,
        learning_rate=1e-4,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
        logging_steps=10**6,
        save_strategy="no",
        overwrite_output_dir=True,
    )
    collator = VLMInstructionCollator(processor)
    timer = StepTimer(args.warmup)
    trainer = BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=train,
        stream=disjoint_stream(np.asarray(train["label"]), 3, seed=0),
        sample_nbytes=vqa_sample_nbytes,
        evaluator=lambda trainer, seen: (0.0, {}),  # throughput only: nothing to score
        data_collator=collator,
        processing_class=processor,
        callbacks=[timer.callback],
    )
    tokens_per_batch = int(trainer.first_batch()["attention_mask"].sum())  # one fixed shape: every row alike
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    r = trainer.results
    return {
        "freeze": freeze,
        "iterations": r["iterations"],
        "timed_steps": timer.steps,
        "tokens_per_s": tokens_per_batch * timer.steps / timer.seconds if timer.seconds else float("nan"),
        "backward_saved": r["backward_flops_saved_fraction"],
        "frozen": r["frozen_blocks_histogram"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    require_cuda(args.size)  # before any heavy import or allocation
    import warnings

    import torch

    from hf_budgetcl.runs.vlm_instruction_stream import ModelArguments, prepare_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    image = SIZES[args.size][0][4]
    # online_iter 1: one iteration per arriving row (half new rows, half replay), so steps + 1 rows.
    train = synthetic_rows(max(args.steps + 1, args.batch), image)
    corpus = sorted(set(train["question"])) + sorted(set(train["answer"]))
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"building a {args.size} LLaVA from config on {device} ...", file=sys.stderr)
        layers = build_base(args.size, corpus, f"{tmp}/base", device)
        for path in args.paths:
            quant = "4bit" if path == "qlora" else "none"
            model_args = ModelArguments(
                model_name_or_path=f"{tmp}/base",
                quantization=quant,
                torch_dtype="bfloat16" if device == "cuda" else "float32",
                lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, processor = prepare_model(model_args, f"{tmp}/base")
            if device == "cuda" and quant == "none":
                model.to(device)
            loaded_on = {p.device.type for p in model.parameters()}
            for freeze in ("none", f"static:{layers // 2}", "adaptive"):
                row = run_one(model, processor, train, freeze, args, f"{tmp}/{path}_{freeze}", bf16=device == "cuda")
                lines.append({"path": path, "on": ",".join(sorted(loaded_on)), **row})
                print(lines[-1], file=sys.stderr)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    header = "| path | on | freeze | timed steps | tokens/s | × vs none | backward FLOPs saved | frozen histogram | peak GiB |"
    print(f"\n{args.size} decoder, batch {args.batch}, LoRA r={args.lora_r}, {torch.__version__}\n")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base = {}
    for row in lines:
        base.setdefault(row["path"], row["tokens_per_s"])
        print(
            f"| {row['path']} | {row['on']} | {row['freeze']} | {row['timed_steps']} | {row['tokens_per_s']:,.0f} | "
            f"{row['tokens_per_s'] / base[row['path']]:.2f} | {row['backward_saved']:.1%} | {row['frozen']} | "
            f"{row['peak_gib']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
