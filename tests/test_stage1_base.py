"""The stage-1 pretrained VLM base: scene generator (hand-checked samples), letter strings that are never words, and
the cached, deterministic tiny build that reloads through ``load_vlm``.

Disjointness from the continual "read the word" task: its words are real English words, and stage 1 writes only
strings that are not in the packaged word list. When that task lands, a test must check its vocabulary against
:func:`~hf_budgetcl.data.english_words.is_english_word` (every word in it) so the two stay disjoint.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_budgetcl.data.english_words import english_words, is_english_word
from hf_budgetcl.data.stage1_scenes import (
    ATTRIBUTE_CLASSES,
    COLORS,
    NO_LETTERS,
    NUMBERS,
    POSITIONS,
    QUESTION_TYPES,
    ROWS,
    SHAPES,
    Scene,
    SceneShape,
    random_letters,
    render_scene,
    sample_scene,
    scene_attributes,
    scene_question,
    stage1_attribute_images,
    stage1_scenes,
    where_phrase,
)
from hf_budgetcl.training import pretrained_base
from hf_budgetcl.training.pretrained_base import (
    STAGE1_FILE,
    ensure_pretrained_base,
    pretrained_base_path,
    read_stage1,
)
from hf_budgetcl.utils.errors import ConfigError

# Written by hand, not taken from the packaged list: short words a careless generator would produce.
COMMON_WORDS = """AN AS AT BE BY DO GO HE IF IN IS IT ME MY NO OF ON OR SO TO UP US WE ACE ACT ADD AGE AGO AIR ALL AND
ANY ARE ART ASK BAD BAG BED BIG BOX BOY BUS BUT BUY CAN CAR CAT CUP CUT DAY DOG DRY EAR EAT EGG END EYE FAR FEW FLY
FOR FUN GAS GET GOT GUN HAD HAS HAT HER HIM HIS HOT HOW ICE ILL JOB KEY KID LAW LEG LET LIE LOT LOW MAN MAP MAY MEN MIX
NET NEW NOT NOW ODD OFF OIL OLD ONE OUR OUT OWN PAY PEN PET PUT RED RUN SAD SAT SAW SAY SEA SEE SET SHE SIT SIX SKY SON
SUN TEA TEN THE TOO TOP TOY TRY TWO USE WAR WAS WAY WET WHO WHY WIN YES YET YOU ABLE AREA AWAY BABY BACK BALL BANK BEST
BIRD BLUE BOAT BODY BOOK BOTH CAKE CALL CAME CARD CARE CASE CITY COLD COME COOK CORN DARK DATA DEAR DOOR DOWN DRAW EACH
EAST EASY EVEN FACE FACT FARM FAST FEEL FILM FIND FINE FIRE FISH FIVE FOOD FOOT FORM FOUR FREE FROM FULL GAME GIRL GIVE
GOLD GOOD GRAY GREW HAIR HALF HAND HARD HAVE HEAD HEAR HELP HERE HIGH HOLD HOME HOPE HOUR IDEA INTO JUST KEEP KIND KING
KNOW LAND LAST LATE LEFT LESS LIFE LINE LIST LIVE LONG LOOK LOVE MADE MAKE MANY MEAN MILK MIND MISS MORE MOST MOVE MUCH
MUST NAME NEAR NEED NEXT NICE NINE NOTE OPEN OVER PAGE PART PINK PLAY PULL PUSH RAIN READ REAL REST RICH RIDE ROAD ROCK
ROOM RULE SAFE SAID SAME SAVE SEND SHIP SHOP SHOW SIDE SIGN SING SIZE SLOW SNOW SOFT SOME SONG SOON STAR STAY STOP SURE
TAKE TALK TALL TEAM TELL TEXT THAN THAT THEM THEN THEY THIS TIME TOWN TREE TRUE TURN TYPE UNIT VERY WAIT WALK WALL WANT
WARM WASH WAVE WEEK WELL WENT WERE WEST WHAT WHEN WIDE WIFE WILD WILL WIND WISH WITH WOOD WORD WORK YEAR YOUR ZERO""".split()


def _nearest_color(rgb) -> str:
    return min(COLORS, key=lambda c: np.linalg.norm(np.subtract(COLORS[c], rgb, dtype=float)))


# -- scenes ----------------------------------------------------------------------------------------------------


def test_hand_checked_scenes():
    """Scenes 0 and 7 of seed 0 (train), checked by eye on their 32 px renders."""
    first = sample_scene(np.random.default_rng([0, 0, 0]))
    assert first == Scene(
        "brown",
        (
            SceneShape("star", "purple", "large", "top right"),
            SceneShape("square", "white", "large", "bottom left"),
            SceneShape("circle", "orange", "large", "bottom right"),
        ),
        letters="EV",
        letters_color="pink",
        letters_row="middle",
    )
    assert first.caption() == (
        "a large purple star at the top right, a large white square at the bottom left, a large orange circle at "
        "the bottom right and the letters EV in pink in the middle, on a brown background"
    )
    eighth = sample_scene(np.random.default_rng([0, 0, 7]))
    assert eighth == Scene("cyan", (SceneShape("cross", "orange", "small", "bottom right"),))
    rng = np.random.default_rng(0)
    assert scene_question(eighth, "count", rng)[1] == "one"
    assert scene_question(eighth, "letters", rng)[1] == NO_LETTERS
    assert scene_question(eighth, "position", rng) in {
        ("Where is the orange cross?", "bottom right"),
        ("In which part of the image is the orange cross?", "bottom right"),
    }


@pytest.mark.parametrize("seed", [3, 11])
def test_answers_match_the_pixels(seed):
    """At a larger render, each shape's centre shows its named colour and the image corner the background's;
    every answer is about what was drawn."""
    for index in range(12):
        rng = np.random.default_rng([seed, 0, index])
        scene = sample_scene(rng)
        pixels = np.asarray(render_scene(scene, rng, image_size=96))
        assert _nearest_color(pixels[0, 0]) == scene.background
        for s in scene.shapes:
            k = POSITIONS.index(s.position)
            cx, cy = int((k % 3 + 0.5) * 32), int((k // 3 + 0.5) * 32)  # cell centre, within the jitter
            assert _nearest_color(pixels[cy, cx]) == s.color, (seed, index, s)
        qrng = np.random.default_rng(index)
        assert scene_question(scene, "count", qrng)[1] == NUMBERS[len(scene.shapes)]
        assert scene_question(scene, "background", qrng)[1] == scene.background
        assert scene_question(scene, "letters", qrng)[1] == (scene.letters or NO_LETTERS)
        question, color = scene_question(scene, "color", qrng)
        assert color in [s.color for s in scene.shapes if f" {s.shape}?" in question or _asks_at(s.position, question)]
        caption = scene.caption()
        assert all(f"{s.size} {s.color} {s.shape}" in caption for s in scene.shapes)


def _asks_at(position: str, question: str) -> bool:
    return question.endswith(f" {where_phrase(position)}?")


def test_scene_dataset_deterministic_and_splits_differ():
    a = stage1_scenes(6, "train", seed=5)
    b = stage1_scenes(6, "train", seed=5)
    test = stage1_scenes(6, "test", seed=5)
    assert a["question"] == b["question"] and a["answer"] == b["answer"]
    assert np.array_equal(np.asarray(a[0]["image"]), np.asarray(b[0]["image"]))
    assert a["answer"] != test["answer"]
    assert a.column_names == ["image", "question", "answer", "concept", "label"]
    assert a[0]["image"].size == (32, 32)
    assert set(test["concept"]) <= set(QUESTION_TYPES) and "caption" in test["concept"]
    # 1 caption + 3 questions per image; the held-out set asks every type once (reading only where written).
    assert len(a) == 6 * 4
    with pytest.raises(ConfigError, match="split"):
        stage1_scenes(2, "validation")


def test_scene_attributes_hand_checked():
    """Scene 0 of seed 0 (the first hand-checked scene) as the vision tower's targets."""
    attributes = dict(
        zip([n for n, _ in ATTRIBUTE_CLASSES], scene_attributes(sample_scene(np.random.default_rng([0, 0, 0]))))
    )
    colors = list(COLORS)
    assert attributes["background"] == colors.index("brown")
    assert attributes["shape@top right"] == 1 + SHAPES.index("star")
    assert attributes["color@top right"] == 1 + colors.index("purple")
    assert attributes["shape@bottom left"] == 1 + SHAPES.index("square")
    assert attributes["size@bottom right"] == 2  # large
    assert attributes["shape@center"] == attributes["color@top"] == attributes["size@left"] == 0  # empty cells
    assert attributes["letters_row"] == 1 + ROWS.index("middle")
    assert attributes["letters_color"] == 1 + colors.index("pink")
    no_letters = scene_attributes(sample_scene(np.random.default_rng([0, 0, 7])))
    assert no_letters[-2:] == [0, 0]


def test_attribute_images_are_the_scene_images():
    """The tower is pretrained on the caption phase's own images, and its targets agree with the answers."""
    images, attributes = stage1_attribute_images(5, "test", seed=3)
    rows = stage1_scenes(5, "test", seed=3, questions_per_image=None).filter(lambda r: r["concept"] == "background")
    assert attributes.shape == (5, len(ATTRIBUTE_CLASSES))
    assert all(np.array_equal(np.asarray(a), np.asarray(r["image"])) for a, r in zip(images, rows))
    assert [list(COLORS)[i] for i in attributes[:, 0]] == rows["answer"]
    assert all((attributes[:, i] < n).all() for i, (_, n) in enumerate(ATTRIBUTE_CLASSES))


def test_letter_strings_are_never_words():
    strings = [random_letters(np.random.default_rng(i)) for i in range(3000)]
    assert {len(s) for s in strings} == {2, 3, 4} and all(s.isupper() and s.isalpha() for s in strings)
    assert not set(strings) & set(COMMON_WORDS)
    assert not any(is_english_word(s) for s in strings)
    # The filter matters: drawn without it, short strings are often words.
    raw = ["".join(np.random.default_rng(i).choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), size=2)) for i in range(300)]
    assert any(is_english_word(s) for s in raw)
    assert all(is_english_word(w) for w in COMMON_WORDS) and len(english_words()) > 20_000
    rows = stage1_scenes(60, seed=2)
    written = [a for a, c in zip(rows["answer"], rows["concept"]) if c == "letters"]
    assert written and not any(is_english_word(a) for a in written if a != NO_LETTERS)


# -- the tiny base -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    threads = torch.get_num_threads()
    path = ensure_pretrained_base("llava", "tiny", cache_dir=str(tmp_path_factory.mktemp("cache")))
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()  # restored
    return path


def test_tiny_build_records_stage1(tiny_base):
    assert os.path.basename(tiny_base).startswith("stage1_llava_tiny_")
    record = read_stage1(tiny_base)
    cfg = pretrained_base.SIZES["tiny"]
    assert record["config"]["lm_hidden"] == cfg.lm_hidden and record["seed"] == 0
    assert record["data"]["train_rows"] == cfg.train_images * (1 + cfg.questions_per_image)
    assert np.isfinite(record["train_loss"])
    per_type = record["eval"]["per_type"]
    assert set(per_type) <= set(QUESTION_TYPES) and {"caption", "color", "count"} <= set(per_type)
    assert sum(v["questions"] for v in per_type.values()) == record["data"]["eval_rows"]
    assert all(0 <= v["exact_match"] <= 1 and 0 <= v["majority_baseline"] <= 1 for v in per_type.values())


def test_tower_is_pretrained_then_kept(tmp_path, monkeypatch):
    """Phase 1 trains tower and projector on the scene attributes; the caption phase then trains projector and
    decoder around a frozen tower (trained with them, Adam's full steps on tiny gradients wreck it)."""
    after_phase_1 = {}
    pretrain = pretrained_base.pretrain_vision

    def spy(model, *args):
        record = pretrain(model, *args)
        after_phase_1.update({k: v.clone() for k, v in model.state_dict().items()})
        return record

    monkeypatch.setattr(pretrained_base, "pretrain_vision", spy)
    record = pretrained_base.build_pretrained_base("qwen2vl", "tiny", str(tmp_path / "base"))
    assert record["vision_pretraining"]["steps"] == pretrained_base.SIZES["tiny"].vision_steps > 0
    assert set(record["vision_pretraining"]["held_out_accuracy"]) == {
        "background",
        "shape",
        "color",
        "size",
        "letters",
    }
    from hf_budgetcl.models.tiny_vlm import load_vlm

    saved = load_vlm(str(tmp_path / "base"))[0].state_dict()  # the checkpoint's keys are converted on save
    tower = [k for k in saved if ".visual." in k and ".merger." not in k]
    merger = [k for k in saved if ".merger." in k]
    assert tower and merger
    assert all(torch.equal(saved[k], after_phase_1[k]) for k in tower)
    assert not all(torch.equal(saved[k], after_phase_1[k]) for k in merger)


def test_tiny_build_is_cached(tiny_base, monkeypatch):
    stamp = os.path.getmtime(os.path.join(tiny_base, STAGE1_FILE))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached base was rebuilt")

    monkeypatch.setattr(pretrained_base, "build_pretrained_base", no_training)
    assert ensure_pretrained_base("llava", "tiny", cache_dir=os.path.dirname(tiny_base)) == tiny_base
    assert os.path.getmtime(os.path.join(tiny_base, STAGE1_FILE)) == stamp
    assert pretrained_base_path("llava", "tiny", os.path.dirname(tiny_base)) == tiny_base
    assert pretrained_base_path("llava", "tiny", os.path.dirname(tiny_base), seed=1) != tiny_base


def test_tiny_build_is_deterministic(tiny_base, tmp_path):
    again = ensure_pretrained_base("llava", "tiny", cache_dir=str(tmp_path))
    first, second = (load_file(os.path.join(p, "model.safetensors")) for p in (tiny_base, again))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert read_stage1(again)["train_loss"] == read_stage1(tiny_base)["train_loss"]


def test_tiny_base_reloads_trained_through_load_vlm(tiny_base):
    """The saved model is the trained one: on its own training rows it beats the same architecture untrained."""
    from hf_budgetcl.data.vlm_collator import VLMInstructionCollator
    from hf_budgetcl.models.tiny_vlm import load_vlm

    model, processor = load_vlm(tiny_base)
    assert type(processor).__name__ == "LlavaProcessor"
    batch = VLMInstructionCollator(processor)(list(stage1_scenes(8, "train", seed=0)))
    fresh = type(model)(model.config)  # same architecture, initial weights (initializer_range as built)
    with torch.no_grad():
        trained, untrained = model(**batch).loss, fresh(**batch).loss
    assert trained < untrained


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    stale = pretrained_base_path("qwen2vl", "tiny", str(tmp_path)) + ".tmp-99999999"
    os.makedirs(stale)

    def crash(family, size, save_dir, seed=0):
        os.makedirs(save_dir)
        open(os.path.join(save_dir, "model.safetensors"), "w").close()
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(pretrained_base, "build_pretrained_base", crash)
    with pytest.raises(RuntimeError, match="mid-build"):
        ensure_pretrained_base("qwen2vl", "tiny", cache_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(stale).split(".tmp-")[0] + ".lock"]


def test_bad_family_or_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="family"):
        ensure_pretrained_base("idefics", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="base_size"):
        ensure_pretrained_base("llava", "huge", cache_dir=str(tmp_path))


def test_recipe_resolves_stage1_names(tiny_base, monkeypatch):
    from hf_budgetcl.runs.vlm_instruction_stream import ModelArguments, build_base_model

    monkeypatch.setenv("HF_BUDGETCL_CACHE", os.path.dirname(tiny_base))
    args = ModelArguments(model_name_or_path="stage1_llava", base_size="tiny")
    assert build_base_model(args, None, "unused") == tiny_base
    assert build_base_model(args, None, "unused", build=False) == tiny_base
    with pytest.raises(ConfigError, match="base_size"):
        build_base_model(ModelArguments(model_name_or_path="stage1_qwen2vl", base_size="xl"), None, "unused")
