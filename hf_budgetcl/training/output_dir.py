"""The output-folder policy: a run never silently replaces a finished run or another run's checkpoints.

A fresh run (no resume) into a folder that holds ``results.json`` or ``checkpoint-*`` folders refuses, naming the
ways on: ``--overwrite_output_dir true`` (the old checkpoints are removed first, so a later ``--resume`` cannot pick
them up; the earlier finished run stays until the new one's atomic finish replaces it, see :mod:`.finish`),
``--resume true``, or another folder. The folder must be writable before anything trains.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..utils.errors import ConfigError
from .finish import recover_output_dir

RESULTS_NAME = "results.json"


def earlier_run_files(output_dir: str) -> list[str]:
    """The files and folders of an earlier run in ``output_dir``: its results and its checkpoints."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir))
    return [n for n in names if n == RESULTS_NAME or n.startswith(f"{PREFIX_CHECKPOINT_DIR}-")]


def prepare_output_dir(output_dir: str, resuming: bool, overwrite: bool, main_process: bool = True) -> None:
    """Refuse to start a fresh run over an earlier one unless ``overwrite``; check that the folder is writable."""
    if main_process:
        recover_output_dir(output_dir)  # a finish killed half-way: the folder as that finish left it, completed
    earlier = earlier_run_files(output_dir)
    if earlier and not resuming:
        if not overwrite:
            shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
            raise ConfigError(
                f"output_dir: {output_dir} holds an earlier run ({shown}); pass --overwrite_output_dir true to "
                "replace it, --resume true to continue it, or choose another output_dir"
            )
        if main_process:
            for name in earlier:
                if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
                    shutil.rmtree(os.path.join(output_dir, name))
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir: {output_dir} is not writable ({err.strerror})") from None
