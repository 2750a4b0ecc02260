"""Batching visual-question rows for instruction tuning of HF vision-language models.

The loss is put on the answer only: each row becomes a chat (user: image + question, assistant: answer) rendered
with the processor's own chat template; the prompt (rendered with ``add_generation_prompt=True``) and the full
conversation are tokenised, and every position before the completion, padding and image tokens get label -100.
The completion is "answer + end-of-turn token" (the template's own, or ``eos`` appended where the template emits
none; trailing whitespace after it is dropped).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, Qwen2VLImageProcessorPil

from ..utils.errors import ConfigError

IGNORE_INDEX = -100


class Qwen2VLPadExpandingProcessor:
    """Stand-in for ``Qwen2VLProcessor``, which cannot be built without torchvision (its video processor needs it).

    Runs ``Qwen2VLImageProcessorPil`` (``pixel_values`` as flattened patches, ``image_grid_thw``), expands the n-th
    ``<|image_pad|>`` of the text into ``prod(image_grid_thw[n]) // merge_size**2`` copies (one per merged patch,
    the number of visual embeddings the model scatters there), tokenises, and sets ``mm_token_type_ids`` (1 at image
    pads, 0 elsewhere), which Qwen2-VL requires whenever ``image_grid_thw`` is given.
    """

    MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
    image_token = "<|image_pad|>"

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(
        self, images: Any = None, text: str | Sequence[str] | None = None, return_tensors: str | None = "pt", **kwargs
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        data: dict[str, Any] = {}
        if images is not None:
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            vision = self.image_processor(images=flat, return_tensors="pt")
            data.update(vision)
            merge = self.image_processor.merge_size
            counts = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
            texts = self._expand(texts, counts)
        encoded = self.tokenizer(texts, return_tensors=return_tensors, **kwargs)
        data.update(encoded)
        ids = encoded["input_ids"]
        if isinstance(ids, torch.Tensor):
            data["mm_token_type_ids"] = (ids == self.image_token_id).long()
        else:
            data["mm_token_type_ids"] = [[int(t == self.image_token_id) for t in row] for row in ids]
        return BatchFeature(data, tensor_type=return_tensors)

    def _expand(self, texts: list[str], counts: list[int]) -> list[str]:
        pieces = [t.split(self.image_token) for t in texts]
        if sum(len(p) - 1 for p in pieces) != len(counts):
            raise ValueError(f"{len(counts)} images but {sum(len(p) - 1 for p in pieces)} {self.image_token} tokens")
        it = iter(counts)
        expanded = []
        for first, *rest in pieces:
            expanded.append(first + "".join(self.image_token * next(it) + tail for tail in rest))
        return expanded

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, save_dir: str | os.PathLike) -> None:
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(save_dir)
        self.image_processor.save_pretrained(save_dir)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> Qwen2VLPadExpandingProcessor:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **kwargs)
        template = tokenizer.chat_template
        path = os.path.join(str(name_or_path), "chat_template.json")
        if template is None and os.path.isfile(path):  # Hub checkpoints keep it at the processor level
            with open(path) as f:
                template = json.load(f)["chat_template"]
        return cls(image_processor, tokenizer, chat_template=template)


def detect_family(processor: Any) -> str:
    """``"llava"``, ``"qwen2_vl"`` or ``"generic"`` from the processor class."""
    name = type(processor).__name__.lower()
    if isinstance(processor, Qwen2VLPadExpandingProcessor) or name.startswith(("qwen2vl", "qwen2_5_vl")):
        return "qwen2_vl"
    if name.startswith("llava"):
        return "llava"
    return "generic"


def to_pil(image: Any) -> Image.Image:
    """A row's image (PIL, ``{"bytes", "path"}`` dict as stored by ``datasets.Image``, path, HxWxC array) as RGB."""
    if isinstance(image, Mapping):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    if isinstance(image, (str, os.PathLike, io.BytesIO)):
        image = Image.open(image)
    elif not isinstance(image, Image.Image):
        image = Image.fromarray(torch.as_tensor(image).numpy())
    return image.convert("RGB")


class VLMInstructionCollator:
    """Turn ``{"image", "question", "answer"}`` rows into model inputs with answer-only ``labels``.

    Sequences are right-padded to a multiple of ``pad_to_multiple_of`` (few distinct shapes keep shape-keyed
    FLOPs caches small) and cut to ``max_length`` (never inside the image tokens, which precede the text; a
    ValueError if it would). ``family``: ``"auto"`` (from the processor class), ``"llava"``, ``"qwen2_vl"`` (adds
    ``mm_token_type_ids`` if the processor did not) or ``"generic"`` (any processor taking ``images=``/``text=``).
    """

    def __init__(
        self,
        processor: Any,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = 16,
        family: str = "auto",
        image_column: str = "image",
        question_column: str = "question",
        answer_column: str = "answer",
    ):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.family = detect_family(processor) if family == "auto" else family
        if self.family not in ("llava", "qwen2_vl", "generic"):
            raise ConfigError(f"unknown family {family!r}; expected 'auto', 'llava', 'qwen2_vl' or 'generic'")
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.image_column, self.question_column, self.answer_column = image_column, question_column, answer_column
        image_token = getattr(processor, "image_token", None)
        self.image_token_id: int | None = getattr(processor, "image_token_id", None)
        if self.image_token_id is None and image_token:
            self.image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)
        self._specials = list(self.tokenizer.all_special_tokens)

    # -- prompt building ---------------------------------------------------------------------------------------
    def messages(self, row: Mapping[str, Any], with_answer: bool) -> list[dict[str, Any]]:
        """The chat for one row: user turn (image + question) and, optionally, the assistant's answer."""
        user = [{"type": "image"}, {"type": "text", "text": str(row[self.question_column])}]
        chat = [{"role": "user", "content": user}]
        if with_answer:
            chat.append({"role": "assistant", "content": [{"type": "text", "text": str(row[self.answer_column])}]})
        return chat

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        return self.processor.apply_chat_template(
            self.messages(row, False), add_generation_prompt=True, tokenize=False
        )

    def full_text(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """``(full conversation, prompt)``; the text after the prompt (answer + end of turn) is what gets supervised."""
        prompt = self.prompt_text(row)
        full = self.processor.apply_chat_template(self.messages(row, True), tokenize=False).rstrip()
        completion = full[len(prompt) :] if full.startswith(prompt) else None
        if completion is not None and not any(s in completion for s in self._specials):
            full += self.tokenizer.eos_token  # template closes the turn with nothing: teach the model to stop
        return full, prompt

    def _completion_length(self, full: str, prompt: str) -> int:
        """Tokens after the prompt in the tokenised conversation (text-only tokenisation: images come earlier)."""
        full_ids = self.tokenizer(full)["input_ids"]
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        common = 0
        for a, b in zip(full_ids, prompt_ids):
            if a != b:
                break
            common += 1
        return len(full_ids) - common

    def _encode(self, rows: Sequence[Mapping[str, Any]], texts: list[str], padding_side: str) -> BatchFeature:
        images = [to_pil(r[self.image_column]) for r in rows]
        batch = self.processor(
            images=images,
            text=texts,
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors="pt",
        )
        if self.family == "qwen2_vl" and "mm_token_type_ids" not in batch:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).long()
        batch.pop("token_type_ids", None)
        return batch

    # -- training batches --------------------------------------------------------------------------------------
    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts, completion_lens = [], []
        for row in rows:
            full, prompt = self.full_text(row)
            texts.append(full)
            completion_lens.append(self._completion_length(full, prompt))
        batch = self._encode(rows, texts, padding_side="right")
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (n_valid, n_completion) in enumerate(zip(mask.sum(1).tolist(), completion_lens)):
            labels[i, n_valid - n_completion : n_valid] = input_ids[i, n_valid - n_completion : n_valid]
        if self.image_token_id is not None:
            labels[input_ids == self.image_token_id] = IGNORE_INDEX
        batch["labels"] = labels
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            self._check_images_kept(input_ids)
            for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
                if key in batch:
                    batch[key] = batch[key][:, : self.max_length]
        return dict(batch)

    def _check_images_kept(self, input_ids: torch.Tensor) -> None:
        if self.image_token_id is None:
            return
        if (input_ids[:, self.max_length :] == self.image_token_id).any():
            raise ConfigError(f"max_length={self.max_length} would cut image tokens; raise it")

    # -- evaluation --------------------------------------------------------------------------------------------
    def build_generation_inputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Prompt-only inputs (``add_generation_prompt=True``), left-padded so all prompts end at the same index."""
        batch = self._encode(rows, [self.prompt_text(r) for r in rows], padding_side="left")
        return dict(batch)

    def decode_answers(self, generated_ids: torch.Tensor, prompt_len: int) -> list[str]:
        """Decode what ``generate()`` produced after the (left-padded) prompt of length ``prompt_len``."""
        texts = self.tokenizer.batch_decode(generated_ids[:, prompt_len:], skip_special_tokens=True)
        return [t.strip() for t in texts]
