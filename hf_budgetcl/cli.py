"""``hf-budgetcl``: run a recipe from a YAML config, with any key overridable on the command line.

hf-budgetcl run --config recipes/configs/digits_er.yaml --method replay --seed 2 --output_dir out/
hf-budgetcl push out/ user/digits-er [--private] [--token hf_...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .runs.arguments import read_yaml_config, split_equals_config
from .utils.errors import ConfigError

RECIPES = ("image_classification", "vlm_instruction_stream")


def _recipe_main(name: str) -> Callable[[Sequence[str]], object]:
    if name == "image_classification":
        from .runs.image_classification import run
    elif name == "vlm_instruction_stream":
        from .runs.vlm_instruction_stream import run
    else:
        raise ConfigError(f"recipe: unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    return run


def recipe_of(argv: Sequence[str]) -> str:
    """The recipe named by the config's ``recipe`` key (default: image_classification)."""
    argv = split_equals_config(argv)
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        return str(read_yaml_config(argv[argv.index("--config") + 1]).get("recipe", "image_classification"))
    return "image_classification"


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="hf-budgetcl", description=__doc__.splitlines()[0])
    top.add_argument(
        "command",
        choices=["run", "compare", "push"],
        help="run: train and evaluate one configuration; compare: several methods and seeds; "
        "push: upload a finished run to the Hub",
    )
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "push":
        return push_main(rest)
    if command == "compare":
        from .compare.harness import main as compare_main

        status = {"code": 0}
        code = run_guarded(lambda: status.update(code=compare_main(rest)))
        return code or status["code"]
    if command != "run":
        top.parse_args([command])  # argparse prints the usage error and exits 2
    return run_guarded(lambda: _recipe_main(recipe_of(rest))(rest))


if __name__ == "__main__":
    sys.exit(main())
