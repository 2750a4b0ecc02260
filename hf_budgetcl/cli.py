"""``hf-budgetcl``: run a recipe from a YAML config, with any key overridable on the command line.

hf-budgetcl run --config recipes/configs/digits_er.yaml --method replay --seed 2 --output_dir out/
hf-budgetcl run --config digits_er                      # a config shipped with the package, by name
hf-budgetcl run --recipe vlm_instruction_stream --help  # every option of a recipe, no YAML needed
hf-budgetcl launch --config_file multi_gpu -- --config digits_er   # accelerate launch, as `trl sft` does
hf-budgetcl push out/ user/digits-er [--private] [--token hf_...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# Only light imports here: `hf-budgetcl --help` must not load torch or transformers.
from .runs.yaml_config import RECIPE_NAMES, recipe_of, resolve_config, shipped_configs, split_equals_config
from .utils.errors import ConfigError

RECIPES = RECIPE_NAMES
__all__ = ["main", "recipe_of", "run_guarded"]


def recipe_runner(name: str) -> Callable[[Sequence[str]], object]:
    """The ``run(argv)`` of a recipe (imported only when asked for, so that ``--help`` stays fast)."""
    if name == "image_classification":
        from .runs.image_classification import run
    elif name == "vlm_instruction_stream":
        from .runs.vlm_instruction_stream import run
    else:
        raise ConfigError(f"recipe: unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    return run


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn``; configuration errors and missing files become one line on stderr and exit status 2, a failed
    write (a full disk) one line and exit status 1. Any other exception is a bug and keeps its traceback."""
    try:
        fn()
    except (ConfigError, FileNotFoundError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hf-budgetcl: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while a checkpoint was written (CheckpointSaveError)
        print(f"hf-budgetcl: error: {err}", file=sys.stderr)
        return 1
    return 0


def push_main(argv: Sequence[str]) -> int:
    """``hf-budgetcl push <output_dir> <repo_id>``: upload a finished run (model, processor, card, results)."""
    from huggingface_hub.errors import HfHubHTTPError

    from .hub.push import HubUnreachableError, push_output_dir

    parser = argparse.ArgumentParser(prog="hf-budgetcl push", description="Upload a finished run to the Hub.")
    parser.add_argument("output_dir", help="output_dir of a finished run (holds README.md and results.json)")
    parser.add_argument("repo_id", help="Hub model repository, e.g. user/digits-er")
    parser.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: the cached login)")
    args = parser.parse_args(list(argv))
    try:
        commit = push_output_dir(args.output_dir, args.repo_id, token=args.token, private=args.private)
    except FileNotFoundError as err:
        print(f"hf-budgetcl: error: {err}", file=sys.stderr)
        return 2
    except (HubUnreachableError, HfHubHTTPError) as err:
        print(f"hf-budgetcl: error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(commit.commit_url)
    return 0


def launch_main(argv: Sequence[str]) -> int:
    """``hf-budgetcl launch [ACCELERATE OPTIONS] -- [RUN OPTIONS]``: ``accelerate launch -m hf_budgetcl.cli run ...``.

    ``--config_file`` may name a shipped accelerate config (single_gpu, multi_gpu, fsdp, ...); without ``--`` every
    argument is a run option and accelerate uses its own default config.
    """
    argv = list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        shipped = ", ".join(shipped_configs("accelerate"))
        print(
            "usage: hf-budgetcl launch [ACCELERATE LAUNCH OPTIONS] -- [hf-budgetcl run OPTIONS]\n\n"
            "Runs `accelerate launch -m hf_budgetcl.cli run ...`. --config_file takes a path or a shipped accelerate "
            f"config: {shipped}.\nExample: hf-budgetcl launch --config_file multi_gpu -- --config digits_er --seed 2"
        )
        return 0
    launch_args, run_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else ([], argv)
    launch_args = split_equals_config(launch_args, options=("--config_file",))
    if "--config_file" in launch_args:
        i = launch_args.index("--config_file") + 1
        if i < len(launch_args):
            launch_args[i] = resolve_config(launch_args[i], kind="accelerate")
    recipe_of(run_args)  # a bad config or recipe is one line here, not one per process
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args([*launch_args, "-m", "hf_budgetcl.cli", "run", *run_args])
    launch_command(args)
    return 0


def _top_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hf-budgetcl",
        description=__doc__.splitlines()[0],
        usage="hf-budgetcl {run,compare,launch,push} [--config CONFIG] [--recipe RECIPE] [--key value ...]",
        epilog=f"Shipped configs (--config NAME): {', '.join(shipped_configs()) or 'none'}. "
        "`hf-budgetcl run --recipe NAME --help` lists every option of a recipe; `hf-budgetcl compare --help`, "
        "`hf-budgetcl launch --help`, `hf-budgetcl push --help` the others'.",
    )
    top.add_argument(
        "command",
        choices=["run", "compare", "launch", "push"],
        help="run: train and evaluate one configuration; compare: several methods and seeds; launch: run under "
        "accelerate launch (several processes/GPUs); push: upload a finished run to the Hub",
    )
    top.add_argument(
        "--config", help="YAML config (a path, or a shipped config's name); any key can be overridden as --key value"
    )
    top.add_argument(
        "--recipe",
        choices=RECIPES,
        help="recipe to run (default: the config's recipe key, else image_classification)",
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "push":
        return push_main(rest)
    if command == "launch":
        return run_guarded(lambda: launch_main(rest)) if rest[:1] not in (["-h"], ["--help"]) else launch_main(rest)
    if command == "compare":
        from .compare.harness import main as compare_main

        status = {"code": 0}
        code = run_guarded(lambda: status.update(code=compare_main(rest)))
        return code or status["code"]
    if command != "run":
        top.parse_args([command])  # argparse prints the usage error and exits 2
    return run_guarded(lambda: recipe_runner(recipe_of(rest))(rest))


if __name__ == "__main__":
    sys.exit(main())
