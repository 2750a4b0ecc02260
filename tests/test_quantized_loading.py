"""What a quantised load asks ``from_pretrained`` for (compute dtype, device map), on a mocked GPU and on CPU, and the
README's GPU QLoRA command parsed by the launcher's and the recipe's own parsers."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import warnings

import pytest
import torch

from hf_budgetcl.models import loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Spy(Exception):
    """Stops ``from_pretrained`` once it has been called: only its arguments matter here."""


@pytest.fixture
def fake_gpu(monkeypatch):
    """One process of a DDP job on GPU 3 of its node, a GPU with bf16."""

    class State:
        local_process_index = 3

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(loading, "PartialState", State)


@pytest.fixture
def spy_from_pretrained(monkeypatch):
    from hf_budgetcl.models import tiny_vlm

    calls = []

    def spy(name, **kwargs):
        calls.append((name, kwargs))
        raise _Spy

    monkeypatch.setattr(tiny_vlm.AutoModelForImageTextToText, "from_pretrained", spy)
    return calls


@pytest.mark.parametrize("dtype, compute", [("auto", torch.bfloat16), ("float16", torch.float16)])
def test_4bit_on_gpu_computes_in_the_dtype_asked_on_this_process_gpu(fake_gpu, spy_from_pretrained, dtype, compute):
    from hf_budgetcl.models.tiny_vlm import load_vlm

    with pytest.raises(_Spy):
        load_vlm("some/vlm", quantization="4bit", dtype=dtype, attn_implementation="sdpa")
    ((name, kwargs),) = spy_from_pretrained
    q = kwargs["quantization_config"]
    assert name == "some/vlm" and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_compute_dtype == compute and kwargs["dtype"] == compute
    assert kwargs["device_map"] == {"": 3} and kwargs["attn_implementation"] == "sdpa"


def test_without_a_gpu_the_kbit_base_goes_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kwargs = loading.from_pretrained_kwargs("auto", None, "8bit")
    assert kwargs["device_map"] == "cpu" and kwargs["quantization_config"].load_in_8bit
    assert kwargs["dtype"] == torch.float32  # bitsandbytes' CPU kernels compute in float32 unless told otherwise
    assert loading.from_pretrained_kwargs("bfloat16") == {"dtype": torch.bfloat16}  # no quantisation: no map


def test_4bit_on_cpu_loads_with_the_compute_dtype_that_follows_torch_dtype(tmp_path):
    pytest.importorskip("bitsandbytes")
    from hf_budgetcl.models.tiny_vlm import TinyVLMSize, build_tiny_llava, load_vlm

    path = build_tiny_llava(
        tmp_path / "base", ["what colour", "red"], size=TinyVLMSize(lm_hidden=32, lm_layers=2, vision_layers=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_vlm(path, quantization="4bit", dtype="bfloat16")
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.compute_dtype == torch.bfloat16
    assert (
        q_proj.weight.device.type == "cpu"
        and model.config.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16
    )


def _readme_qlora_command() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    commands = [c for c in re.split(r"(?<!\\)\n", text) if "--quantization 4bit" in c and "accelerate launch" in c]
    assert len(commands) == 1, commands
    return shlex.split(commands[0].replace("\\\n", " "), comments=True)


def test_readme_gpu_qlora_command_is_correct_by_construction(fake_gpu, spy_from_pretrained, monkeypatch):
    from accelerate.commands.launch import launch_command_parser

    from hf_budgetcl.runs.vlm_instruction_stream import ModelArguments, make_parser, prepare_model

    argv = _readme_qlora_command()
    assert argv[:2] == ["accelerate", "launch"]
    launch = launch_command_parser().parse_args(argv[2:])
    assert launch.training_script == "recipes/vlm_instruction_stream.py"
    assert os.path.isfile(os.path.join(ROOT, launch.training_script))
    assert launch.config_file is None or os.path.isfile(os.path.join(ROOT, launch.config_file))
    monkeypatch.chdir(ROOT)  # the command runs from the repository root
    parser = make_parser()
    # The argparse values (types checked, YAML merged); not the dataclasses: TrainingArguments would set up the GPU.
    values = vars(parser.parse_args(parser.merged_argv(launch.training_script_args, ignore_keys=("recipe",))))
    assert values["bf16"] and not values["use_cpu"]
    model_args = ModelArguments(**{f.name: values[f.name] for f in dataclasses.fields(ModelArguments)})
    assert model_args.quantization == "4bit" and model_args.lora_r > 0 and not model_args.train_vision_tower
    assert model_args.torch_dtype == "bfloat16"
    assert "/" in model_args.model_name_or_path and not os.path.exists(model_args.model_name_or_path)  # a Hub id
    with pytest.raises(_Spy):
        prepare_model(model_args, model_args.model_name_or_path)
    ((name, kwargs),) = spy_from_pretrained
    assert name == model_args.model_name_or_path and kwargs["device_map"] == {"": 3}
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16 == kwargs["dtype"]


def test_gpu_check_script_stops_at_once_without_cuda(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_qlora", os.path.join(ROOT, "scripts/gpu_check_qlora.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(script, "build_base", lambda *a: pytest.fail("built a model without a GPU"))
    with pytest.raises(SystemExit) as stop:
        script.main(["--size", "1b"])
    assert stop.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
