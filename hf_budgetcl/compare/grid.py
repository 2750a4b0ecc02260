"""A declared grid of runs and ``run_grid``, the one runner every benchmark goes through.

A :class:`Run` is one process: ``hf-budgetcl run <args>`` (or, with ``command``, another program such as a benchmark's
own reference loop) writing into ``run_dir``. :func:`run_grid` validates the whole grid first (unknown methods,
missing config files, options the recipe does not have, duplicate run directories; malformed ``name:key=value``
variants fail where they are declared, in :func:`variant_flags`), so a typo stops everything before anything starts.
Then it runs ``jobs`` processes at a time, one torch thread each, a log per run; a run that fails does not stop the
others and comes back as ``{"error": ...}``. A finished run is reused only when its recorded arguments
(``cmd.json``) match.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.errors import ConfigError

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class GridError(ConfigError):
    """An invalid grid entry; the message is one line that names it."""


@dataclass(frozen=True)
class Run:
    """One process of a grid.

    ``args``: the ``hf-budgetcl run`` arguments (``--output_dir``, ``--report_to none`` and ``--disable_tqdm true`` are
    added, ahead of them so that ``args`` win), or the arguments of ``command`` when it is given (then nothing is
    added). ``result_name``: the JSON file the process leaves in ``run_dir``. ``label``: what the tables group by
    (method entry, seed, stream, ...); it is added to the result under ``"label"``."""

    run_dir: Path
    args: tuple[str, ...]
    label: Mapping[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    result_name: str = "results.json"

    def __post_init__(self):
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        if self.command is not None:
            object.__setattr__(self, "command", tuple(str(a) for a in self.command))

    @property
    def name(self) -> str:
        return self.run_dir.name

    def option(self, flag: str) -> str | None:
        """The last value given for ``--flag`` (``--flag value`` or ``--flag=value``) in ``args``; later flags win."""
        value = None
        for i, arg in enumerate(self.args):
            if arg == flag and i + 1 < len(self.args):
                value = self.args[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
        return value


def known_methods() -> Collection[str]:
    """The method registry: the one place the harness looks names up (so registered plug-ins are seen too)."""
    from ..methods import METHODS

    return METHODS


# A separator; ``\,`` is a comma inside an option's value (so a value cannot end in a backslash).
_COMMA = re.compile(r"(?<!\\),")


def variant_flags(entry: str) -> tuple[str, list[str]]:
    r"""``"sar:sar_temperature=0.03,similarity_ema=0.01"`` -> ``("sar", ["--sar_temperature", "0.03", ...])``; later
    flags win, so a variant's ``memory_size`` caps the slots while the byte budget stays the common one. A value that
    holds a comma writes it ``\,``: ``"er:method_options=a=1\,b=2"`` -> ``["--method_options", "a=1,b=2"]``."""
    name, _, options = entry.partition(":")
    pairs = [kv.split("=", 1) for kv in _COMMA.split(options) if kv]
    if not name or any(len(kv) != 2 or not kv[0] for kv in pairs):
        raise GridError(f"variant {entry!r}: expected name[:key=value,...] (a comma inside a value is written \\,)")
    return name, [x for k, v in pairs for x in (f"--{k}", v.replace("\\,", ","))]


def _flag_pairs(args: Sequence[str]) -> list[tuple[str, str | None]]:
    """``["--a", "1", "--b=2"]`` -> ``[("--a", "1"), ("--b", "2")]``; a token that is no flag stands alone."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        if args[i].startswith("--") and eq:
            pairs.append((key, value))
            i += 1
        elif args[i].startswith("--") and i + 1 < len(args):
            pairs.append((args[i], args[i + 1]))
            i += 2
        else:
            pairs.append((args[i], None))
            i += 1
    return pairs


def fold_method_options(args: Sequence[str]) -> list[str]:
    """An ``hf-budgetcl run`` argument list whose flags that are options of its method, not of its recipe
    (``--derpp_alpha 0`` from the variant ``derpp:derpp_alpha=0``), are added to its ``method_options``: the last
    one given (or the config file's) plus these, as one final ``--method_options``. Without such flags ``args`` comes
    back unchanged; an unknown method or recipe is left to :func:`validate`."""
    from ..methods.options import option_fields
    from ..runs.arguments import recipe_parser
    from ..runs.yaml_config import read_yaml_config, recipe_of

    args = [str(a) for a in args]
    pairs = _flag_pairs(args)
    given = dict(p for p in pairs if p[1] is not None)  # the last value of each flag
    try:
        yaml = read_yaml_config(given["--config"]) if "--config" in given else {}
        recipe_flags = recipe_parser(recipe_of(args)).flags()
    except ConfigError:
        return args
    method = given.get("--method", yaml.get("method", "er"))
    if method not in known_methods():
        return args
    own = {f"--{k}" for k in option_fields(known_methods()[method].Options)} - recipe_flags
    by_name = [f"{k[2:]}={v}" for k, v in pairs if k in own and v is not None]
    if not by_name:
        return args
    before = given.get("--method_options", yaml.get("method_options"))
    kept = [x for k, v in pairs if k not in own for x in ((k,) if v is None else (k, v))]
    return [*kept, "--method_options", ",".join([before, *by_name] if before else by_name)]


def split_methods(text: str) -> list[str]:
    r"""``"er,alsar:a=1,b=2,replay"`` -> ``["er", "alsar:a=1,b=2", "replay"]``: a method name never holds ``=``, so an
    item with ``=`` before any ``:`` (``b=2``, ``freeze=static:1``) continues the variant before it. An escaped comma
    ``\,`` stays inside its value (``"er:tasks=shape\,color"`` is one entry)."""
    methods: list[str] = []
    for item in (m.strip() for m in _COMMA.split(text)):
        if not item:
            continue
        if "=" in item.partition(":")[0]:
            if not methods or ":" not in methods[-1]:
                raise GridError(f"--methods: option {item!r} follows no variant (name:key=value,...)")
            methods[-1] += f",{item}"
        else:
            methods.append(item)
    return methods


def variant_dirname(entry: str) -> str:
    r"""A run directory name for a ``name:key=value,...`` entry: ``:`` and the separating commas become ``+``, ``/``
    becomes ``_``; an escaped ``\,`` is a literal comma in the name."""
    parts = _COMMA.split(entry.replace(":", "+").replace("/", "_"))
    return "+".join(part.replace("\\,", ",") for part in parts)


def check_method_options(where: str, method: Any, text: str | None) -> None:
    """A key of ``--method_options`` that ``method`` does not have is a :class:`GridError` now, not in every run."""
    from ..methods.options import option_fields, parse_method_options

    try:
        unknown = sorted(set(parse_method_options(text)) - set(option_fields(method.Options)))
    except ConfigError as err:
        raise GridError(f"{where}: {err}") from None
    if unknown:
        raise GridError(f"{where}: '{unknown[0]}' is not an option of method '{method.name}'")


def validate(runs: Sequence[Run]) -> None:
    """Raise :class:`GridError` for the first invalid entry: a method the registry does not know, a config file that
    does not exist, an option the run's recipe does not have, a ``method_options`` key its method does not have, two
    runs in one directory."""
    methods = None
    seen: dict[Path, Run] = {}
    for run in runs:
        where = f"run {run.name}"
        method = run.option("--method")
        if method is not None:
            methods = known_methods() if methods is None else methods
            if method not in methods:
                raise GridError(f"{where}: unknown method '{method}'; choose from: {', '.join(sorted(methods))}")
        config = run.option("--config")
        if config is not None:
            from ..runs.yaml_config import resolve_config

            try:
                resolve_config(config)  # a path, or a shipped config's name
            except ConfigError:
                raise GridError(f"{where}: config file not found: {config}") from None
        if run.command is None:  # an `hf-budgetcl run`: every flag must be one of its recipe's options
            from ..runs.arguments import recipe_parser
            from ..runs.yaml_config import recipe_of

            try:
                recipe = recipe_of(run.args)
            except ConfigError as err:
                raise GridError(f"{where}: {err}") from None
            flag = recipe_parser(recipe).unknown_flag(run.args)
            if flag is not None:
                raise GridError(f"{where}: '{flag}' is not an option of the {recipe} recipe")
            if method is not None:
                check_method_options(where, methods[method], run.option("--method_options"))
        key = run.run_dir.resolve()
        if key in seen:
            raise GridError(f"{where}: run directory {run.run_dir} is used twice")
        seen[key] = run


def reusable(run: Run, reuse_unrecorded: bool = False) -> bool:
    """Whether ``run_dir`` holds a finished run made with the same arguments (``cmd.json``). A finished run without
    ``cmd.json`` (made before it was recorded) counts only with ``reuse_unrecorded``."""
    if not (run.run_dir / run.result_name).exists():
        return False
    recorded = run.run_dir / "cmd.json"
    if not recorded.exists():
        return reuse_unrecorded
    return json.loads(recorded.read_text()) == list(run.args)


def command_line(run: Run) -> list[str]:
    if run.command is not None:
        return [*run.command, *run.args]
    # A run the harness reruns replaces its own earlier attempt (results, checkpoints) in its run directory.
    fixed = ["--output_dir", str(run.run_dir), "--report_to", "none", "--disable_tqdm", "true"]
    fixed += ["--overwrite_output_dir", "true"]
    return [sys.executable, "-m", "hf_budgetcl.cli", "run", *fixed, *run.args]


PID_FILE = "running.pid"


def still_running(run_dir: Path) -> int | None:
    """The pid of a process still running in ``run_dir`` (its ``running.pid``), ``None`` when there is none."""
    try:
        pid = int((run_dir / PID_FILE).read_text())
        os.kill(pid, 0)  # signal 0: only whether the process exists
    except (OSError, ValueError):
        return None
    return pid


def run_one(
    run: Run,
    threads: int = 1,
    rerun: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    reuse_unrecorded: bool = False,
) -> dict[str, Any]:
    """Run (or reuse) one entry; returns its result JSON with ``label`` added, or ``{"label", "error"}``."""
    result_path = run.run_dir / run.result_name
    if not rerun and reusable(run, reuse_unrecorded):
        return {**json.loads(result_path.read_text()), "label": dict(run.label)}
    alive = still_running(run.run_dir)
    if alive is not None:  # left running by a driver that was killed: never two processes in one run directory
        error = f"still running as pid {alive}, started by an earlier invocation; run again when it has finished"
        print(f"  {run.name}: {error}", file=sys.stderr, flush=True)
        return {"label": dict(run.label), "error": error}
    if result_path.exists():
        print(f"  {run.name}: arguments changed or --rerun, running again", file=sys.stderr, flush=True)
        result_path.unlink()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "cmd.json").write_text(json.dumps(list(run.args)))
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    start = time.perf_counter()
    # The run writes into its own log file, not into a pipe of this process: a driver that is killed leaves its
    # running runs to finish (a later invocation reuses them), where a closed pipe would kill them at their next print.
    log, pid_file = run.run_dir / "log.txt", run.run_dir / PID_FILE
    with open(log, "w") as out:
        proc = subprocess.Popen(command_line(run), cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        pid_file.write_text(str(proc.pid))
        proc.wait()
    pid_file.unlink(missing_ok=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        print(f"  {run.name}: failed ({proc.returncode}): {tail}", file=sys.stderr, flush=True)
        return {"label": dict(run.label), "error": tail, "process_wall_s": wall}
    print(f"  {run.name}: {wall:.0f} s", file=sys.stderr, flush=True)
    return {**json.loads(result_path.read_text()), "label": dict(run.label), "process_wall_s": wall}


def run_grid(
    runs: Sequence[Run],
    jobs: int = 1,
    threads: int = 1,
    rerun: bool | Collection[str] = False,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    reuse_unrecorded: bool = False,
    on_done: Callable[[Run, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Validate ``runs``, then run them ``jobs`` at a time; returns their results in the order of ``runs``.

    ``rerun``: ``True`` reruns every run, a collection of run-directory names only those."""
    validate(runs)
    should_rerun = (lambda run: rerun) if isinstance(rerun, bool) else (lambda run: run.name in rerun)

    def one(run: Run) -> dict[str, Any]:
        result = run_one(run, threads, should_rerun(run), env, cwd, reuse_unrecorded)
        if on_done is not None:
            on_done(run, result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, runs))


def failures(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per failed run of a :func:`run_grid` result list."""
    return [f"{r['label']}: {r['error']}" for r in results if "error" in r]


def completed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` when every run finished; otherwise exit with one line per failed run (all of them ran)."""
    if failed := failures(results):
        raise SystemExit("failed runs:\n" + "\n".join(failed))
    return results
