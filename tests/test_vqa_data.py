"""VQA instruction data: easy-vqa / jsonl / imagefolder loading, replay byte sizes, prompt building and loss masking."""

from __future__ import annotations

import copy
import json
import os
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

easy_vqa = pytest.importorskip("easy_vqa")

from hf_budgetcl.data.vlm_collator import IGNORE_INDEX, VLMInstructionCollator  # noqa: E402
from hf_budgetcl.data.vqa import (  # noqa: E402
    EASY_VQA_ANSWER_TYPES,
    EASY_VQA_ANSWERS,
    load_easy_vqa,
    load_vqa_dataset,
    vqa_sample_nbytes,
)
from hf_budgetcl.models.tiny_vlm import make_tiny_llava, make_tiny_qwen2vl  # noqa: E402

COLUMNS = ["image", "question", "answer", "concept", "label"]


@pytest.fixture(scope="module")
def small() -> datasets.Dataset:
    return load_easy_vqa("train", max_images=40, seed=0)


# -- easy-vqa -------------------------------------------------------------------------------------------------
def test_easy_vqa_full_split_columns_and_answer_type_labels():
    ds = load_easy_vqa("test")
    questions, answers, _ = easy_vqa.get_test_questions()
    assert ds.column_names == COLUMNS and len(ds) == len(questions) == 9673
    assert ds.features["label"].names == list(EASY_VQA_ANSWER_TYPES) == ["shape", "color", "yes_no"]
    assert ds["question"][:50] == questions[:50] and ds["answer"][:50] == answers[:50]
    expected = {**dict.fromkeys(["circle", "rectangle", "triangle"], "shape"), "yes": "yes_no", "no": "yes_no"}
    for answer, concept, label in zip(ds["answer"], ds["concept"], ds["label"]):
        assert concept == expected.get(answer, "color")
        assert label == EASY_VQA_ANSWER_TYPES.index(concept)
    assert set(ds["label"]) == {0, 1, 2}
    image = ds[0]["image"]
    assert isinstance(image, Image.Image) and image.size == (64, 64)


def test_easy_vqa_answer_concepts():
    ds = load_easy_vqa("train", max_images=100, concepts="answer")
    assert ds.features["label"].names == list(EASY_VQA_ANSWERS) and len(EASY_VQA_ANSWERS) == 13
    assert sorted(EASY_VQA_ANSWERS) == sorted(easy_vqa.get_answers())
    assert ds["concept"] == ds["answer"]
    assert ds["label"] == [EASY_VQA_ANSWERS.index(a) for a in ds["answer"]]
    with pytest.raises(ValueError, match="concepts"):
        load_easy_vqa("train", max_images=5, concepts="question_type")


def test_easy_vqa_max_images_keeps_all_questions_and_is_deterministic(small):
    _, _, image_ids = easy_vqa.get_train_questions()
    per_image = Counter(image_ids)
    kept = Counter(row["path"] for row in small.cast_column("image", datasets.Image(decode=False))["image"])
    assert len(kept) == 40
    paths = easy_vqa.get_train_image_paths()
    id_of = {p: i for i, p in paths.items()}
    assert all(per_image[id_of[p]] == n for p, n in kept.items())  # every question of a kept image
    assert len(small) == sum(kept.values())
    again = load_easy_vqa("train", max_images=40, seed=0)
    other = load_easy_vqa("train", max_images=40, seed=1)
    assert again["question"] == small["question"] and again["answer"] == small["answer"]
    assert other["question"] != small["question"] or other["answer"] != small["answer"]


# -- local files ----------------------------------------------------------------------------------------------
def _write_images(folder, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(n):
        Image.fromarray(np.full((16, 16, 3), 20 * k, dtype=np.uint8)).save(folder / f"{k}.png")
        names.append(f"{k}.png")
    return names


ROWS = [("what color?", "red", "color"), ("which shape?", "circle", "shape"), ("is it red?", "no", "yes_no")]


def test_load_jsonl_with_relative_image_paths(tmp_path):
    names = _write_images(tmp_path / "imgs", 3)
    with open(tmp_path / "data.jsonl", "w") as f:
        for name, (q, a, c) in zip(names, ROWS):
            f.write(json.dumps({"img": f"imgs/{name}", "q": q, "answer": a, "task": c, "extra": 1}) + "\n")
    ds, concepts = load_vqa_dataset(
        tmp_path / "data.jsonl", split="train", image_column="img", question_column="q", concept_column="task"
    )
    assert concepts == ["color", "shape", "yes_no"]  # sorted
    assert ds.column_names == COLUMNS
    assert ds["question"] == [r[0] for r in ROWS] and ds["concept"] == [r[2] for r in ROWS]
    assert ds["label"] == [0, 1, 2]
    assert np.asarray(ds[1]["image"]).max() == 20


def test_load_imagefolder_with_metadata(tmp_path):
    names = _write_images(tmp_path / "train", 3)
    with open(tmp_path / "train" / "metadata.jsonl", "w") as f:
        for name, (q, a, c) in zip(names, ROWS):
            f.write(json.dumps({"file_name": name, "question": q, "answer": a, "concept": c}) + "\n")
    ds, concepts = load_vqa_dataset(tmp_path, split="train")
    assert concepts == ["color", "shape", "yes_no"]
    assert sorted(zip(ds["question"], ds["label"])) == sorted((r[0], concepts.index(r[2])) for r in ROWS)
    assert ds[0]["image"].size == (16, 16)


def test_missing_column_and_missing_path(tmp_path):
    _write_images(tmp_path / "imgs", 1)
    with open(tmp_path / "data.jsonl", "w") as f:
        f.write(json.dumps({"image": "imgs/0.png", "question": "q?", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match="concept"):
        load_vqa_dataset(tmp_path / "data.jsonl")
    with pytest.raises(ValueError, match="picture"):
        load_vqa_dataset(tmp_path / "data.jsonl", image_column="picture")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_vqa_dataset(missing)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_vqa_dataset(str(tmp_path / "no_such_dir"))


# -- replay bytes ---------------------------------------------------------------------------------------------
def test_vqa_sample_nbytes(small, tmp_path):
    row = small[0]
    text = len(row["question"].encode()) + len(row["answer"].encode()) + 8
    png = tmp_path / "x.png"
    row["image"].save(png)
    file_size = os.path.getsize(row["image"].filename)
    assert vqa_sample_nbytes(row) == file_size + text  # decoded from a PNG file: the encoded size
    raw = small.cast_column("image", datasets.Image(decode=False))[0]
    assert vqa_sample_nbytes(raw) == file_size + text  # {"path": ..., "bytes": None}
    encoded = png.read_bytes()
    assert vqa_sample_nbytes({**row, "image": {"bytes": encoded, "path": None}}) == len(encoded) + text
    in_memory = Image.new("RGB", (10, 7))
    assert vqa_sample_nbytes({"image": in_memory, "question": "é?", "answer": "ab"}) == 10 * 7 * 3 + 3 + 2 + 8
    array = np.zeros((5, 4, 3), dtype=np.uint8)
    assert vqa_sample_nbytes({"image": array, "question": "", "answer": ""}) == 60 + 8


# -- prompt building and loss masking -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def processor(request):
    corpus = sorted(set(easy_vqa.get_train_questions()[0])) + easy_vqa.get_answers()
    make = make_tiny_llava if request.param == "llava" else make_tiny_qwen2vl
    return make(corpus)[1]


def _rows(ds, n: int) -> list[dict]:
    # Varied question lengths so that padding appears inside the batch.
    return [ds[k] for k in range(n)]


def test_labels_supervise_exactly_the_answer_and_eos(processor, small):
    collator = VLMInstructionCollator(processor, pad_to_multiple_of=16)
    rows = _rows(small, 8)
    batch = collator(rows)
    tok = collator.tokenizer
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape and ids.shape[1] % 16 == 0
    assert (mask == 0).any(), "the batch should contain padding"
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (labels[ids == collator.image_token_id] == IGNORE_INDEX).all()
    assert (ids == collator.image_token_id).sum() > 0
    for i, row in enumerate(rows):
        supervised = labels[i][labels[i] != IGNORE_INDEX]
        assert tok.decode(supervised).strip() == row["answer"] + tok.eos_token
        positions = (labels[i] != IGNORE_INDEX).nonzero().flatten()
        assert (positions == torch.arange(int(positions[0]), int(positions[-1]) + 1)).all()  # one contiguous span
        assert (ids[i][positions] == labels[i][positions]).all()
        # Everything of the prompt (question, image, template) lies before the span: prompt length computed
        # independently, by the processor on the prompt alone.
        prompt = collator.prompt_text(row)
        assert row["question"] in prompt and row["answer"] not in prompt.split(row["question"])[-1]
        alone = processor(images=[row["image"].convert("RGB")], text=[prompt], return_tensors="pt")["input_ids"][0]
        assert positions[0] == len(alone)
        assert (ids[i][: len(alone)] == alone).all()


def test_generation_inputs_are_left_padded_prompts(processor, small):
    collator = VLMInstructionCollator(processor)
    rows = _rows(small, 6)
    gen = collator.build_generation_inputs(rows)
    assert "labels" not in gen and (gen["attention_mask"][:, -1] == 1).all()
    assert (gen["attention_mask"] == 0).any()
    tok = collator.tokenizer
    for i, row in enumerate(rows):
        text = tok.decode(gen["input_ids"][i][gen["attention_mask"][i] == 1])
        assert row["question"] in text and not text.rstrip().endswith(row["answer"])
    # decode_answers reads what comes after the prompt.
    answers = [tok(" " + r["answer"] + tok.eos_token, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, answers))
    tail = [a + [tok.pad_token_id] * (width - len(a)) for a in answers]
    generated = torch.cat([gen["input_ids"], torch.tensor(tail)], dim=1)
    assert collator.decode_answers(generated, gen["input_ids"].shape[1]) == [r["answer"] for r in rows]


def test_max_length_truncates_text_but_never_images(processor, small):
    rows = _rows(small, 4)
    collator = VLMInstructionCollator(processor, pad_to_multiple_of=None)
    full = collator(rows)
    last_image = int((full["input_ids"][0] == collator.image_token_id).nonzero().max())
    cut = VLMInstructionCollator(processor, max_length=last_image + 3, pad_to_multiple_of=None)(rows)
    assert cut["input_ids"].shape[1] == last_image + 3 and cut["labels"].shape == cut["input_ids"].shape
    assert (cut["input_ids"] == full["input_ids"][:, : last_image + 3]).all()
    with pytest.raises(ValueError, match="image tokens"):
        VLMInstructionCollator(processor, max_length=2, pad_to_multiple_of=None)(rows)


def test_eos_is_appended_when_the_template_closes_no_turn(small):
    # The template of the offline reference (§5.4): no end-of-turn token and a trailing space.
    processor = copy.copy(make_tiny_llava(["what color is it? red"])[1])
    processor.chat_template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
        "{% if c['type']=='image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    collator = VLMInstructionCollator(processor)
    rows = _rows(small, 4)
    full, prompt = collator.full_text(rows[0])
    assert full == prompt + " " + rows[0]["answer"] + "</s>"
    batch = collator(rows)
    for i, row in enumerate(rows):
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert collator.tokenizer.decode(supervised) == " " + row["answer"] + "</s>"
