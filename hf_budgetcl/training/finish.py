"""The atomic finish: a run's final artifacts appear in ``output_dir`` all at once, marked complete, or not at all.

The weights, config, processor, ``training_args.bin``, ``results.json``, ``README.md`` and ``stream.json`` are
written into a staging folder next to ``output_dir`` (same parent, so the same filesystem), a completion marker
``.hf_budgetcl_complete`` is written there last, and the staging folder then takes ``output_dir``'s place in one
``renameat2(RENAME_EXCHANGE)``. Whatever else ``output_dir`` held that is no final artifact of an earlier run (the
run's checkpoints, a VLM's ``base_model``, logs) moves into the new folder; the earlier run's own files go with the
old folder. A kill at any moment leaves either the earlier folder untouched or the complete new one (a staging or
old folder may be left beside it, removed by the next finish). Where the kernel or the filesystem has no atomic
exchange, two renames are used and :func:`recover_output_dir` puts back a folder caught between them.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..utils.atomic import write_json_atomic
from ..utils.run_marker import MARKER_NAME, is_complete_run, marker_path, read_marker
from .checkpointing import CheckpointSaveError, find_resumable_checkpoint

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
# safetensors (Rust) and torch's zip writer report a failed write in their own exception types, by message.
_DISK_MESSAGE = re.compile(
    r"No space left|File too large|Disk quota|Read-only file system|os error (28|27|122|30|5)\b|failed writing"
)


def _sibling(output_dir: str, tag: str) -> str:
    path = os.path.abspath(output_dir)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.hf_budgetcl-{tag}")


def staging_dir(output_dir: str) -> str:
    return _sibling(output_dir, "finish")


def old_dir(output_dir: str) -> str:
    return _sibling(output_dir, "old")


def is_disk_error(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return True
    return bool(_DISK_MESSAGE.search(str(err)))


def disk_error_message(err: BaseException, output_dir: str, what: str) -> CheckpointSaveError:
    """One line: what failed, why, and the last intact checkpoint to resume from."""
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
    last = find_resumable_checkpoint(output_dir)
    where = f"the last complete checkpoint {last} is intact: rerun with --resume" if last else "no complete checkpoint"
    if is_complete_run(output_dir):
        where += f"; the earlier finished run in {output_dir} is intact"
    code = getattr(err, "errno", None) or errno.EIO
    return CheckpointSaveError(code, f"{what} in {output_dir} failed ({reason}); {where}")


# ---- the exchange -----------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # libc's, already loaded in this process
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange(a: str, b: str) -> bool:
    """Swap the folders ``a`` and ``b`` atomically; False where this kernel or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), a)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SENTINEL_NAME = ".hf_budgetcl_staging"  # marks a staging folder (before the exchange) apart from a former folder


def _carry_over(former: str, output_dir: str, earlier_files: set[str]) -> None:
    """Move what the former folder holds besides an earlier finish's files (checkpoints, base_model, logs) into
    ``output_dir``, then remove it."""
    present = set(os.listdir(output_dir))
    for name in sorted(os.listdir(former)):
        if name not in earlier_files and name not in present and name != SENTINEL_NAME:
            os.rename(os.path.join(former, name), os.path.join(output_dir, name))
    shutil.rmtree(former, ignore_errors=True)


def _earlier_files(folder: str) -> set[str]:
    earlier = read_marker(folder) if os.path.isdir(folder) else None
    return set(earlier.get("files", [])) | {MARKER_NAME} if earlier else {MARKER_NAME}


def recover_output_dir(output_dir: str) -> None:
    """Finish what a killed finish left: the earlier folder put back (between the fallback's two renames), a former
    folder's checkpoints carried into the installed one, an unfinished staging folder removed."""
    output_dir = os.path.abspath(output_dir)
    old, staging = old_dir(output_dir), staging_dir(output_dir)
    if not os.path.exists(output_dir) and os.path.isdir(old):
        os.rename(old, output_dir)
    if os.path.exists(os.path.join(output_dir, SENTINEL_NAME)):  # installed, killed before the sentinel went
        os.remove(os.path.join(output_dir, SENTINEL_NAME))
    for former in (staging, old):
        if not os.path.isdir(former):
            continue
        if os.path.exists(os.path.join(former, SENTINEL_NAME)) or not os.path.isdir(output_dir):
            shutil.rmtree(former)  # a staging folder that was never installed
        else:
            _carry_over(former, output_dir, _earlier_files(former))


def _install(staging: str, output_dir: str) -> None:
    """``staging`` becomes ``output_dir``; entries of the former folder that belong to no earlier finish follow it."""
    earlier_files = _earlier_files(output_dir)
    old = old_dir(output_dir)
    if os.path.isdir(output_dir):
        if exchange(staging, output_dir):
            old = staging  # the former folder (no sentinel), now at the staging path
        else:
            os.rename(output_dir, old)
            os.rename(staging, output_dir)
        _fsync_dir(os.path.dirname(os.path.abspath(output_dir)))
        _carry_over(old, output_dir, earlier_files)  # checkpoints, base_model, logs: still this run's
    else:
        os.rename(staging, output_dir)
    os.remove(os.path.join(output_dir, SENTINEL_NAME))
    _fsync_dir(os.path.dirname(os.path.abspath(output_dir)))


@contextmanager
def atomic_finish(
    output_dir: str, main_process: bool = True, barrier: Callable[[], None] = lambda: None
) -> Iterator[str]:
    """Yields the staging folder to write the final artifacts into; on leaving, marks it complete and installs it.

    Every process enters (``save_model`` may gather shards); only the main process creates, marks and installs.
    A failure while writing removes the staging folder and leaves ``output_dir`` as it was.
    """
    output_dir = os.path.abspath(output_dir)
    staging = staging_dir(output_dir)
    if main_process:
        recover_output_dir(output_dir)  # what a finish killed earlier left beside the folder
        os.makedirs(staging)
        open(os.path.join(staging, SENTINEL_NAME), "w").close()
    barrier()
    try:
        yield staging
        barrier()
        if main_process:
            files = sorted(set(os.listdir(staging)) - {SENTINEL_NAME})
            # Written last: the marker says every file above is complete (each is synced first).
            for name in files:
                path = os.path.join(staging, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        os.fsync(f.fileno())
            write_json_atomic(marker_path(staging), {"complete": True, "files": files}, indent=2)
            _fsync_dir(staging)
            _install(staging, output_dir)
    except BaseException:
        if main_process:  # before the exchange: the staging folder goes; after it (Ctrl-C): the checkpoints follow
            recover_output_dir(output_dir)
        raise
    barrier()


def finish_run(trainer) -> None:
    """Write a trained ``BudgetedCLTrainer``'s final artifacts into ``output_dir`` atomically.

    A failed write (a full disk, a read-only folder) is one line naming the last intact checkpoint.
    """
    from ..hub.model_card import write_trainer_model_card

    args, main = trainer.args, trainer.is_world_process_zero()
    push, args.push_to_hub = args.push_to_hub, False  # save_model would push the folder before it is installed
    try:
        with atomic_finish(args.output_dir, main, trainer.accelerator.wait_for_everyone) as staging:
            trainer.save_model(staging)  # weights, config, processor, training_args.bin
            if main:
                trainer.save_results(os.path.join(staging, "results.json"))
                trainer.stream.to_json(os.path.join(staging, "stream.json"))
                for name, source in trainer.final_copies.items():  # e.g. a checkpoint's processor file, unchanged
                    shutil.copyfile(source, os.path.join(staging, name))
                # Last: PEFT's save_pretrained writes its own README.md (a local base as base_model).
                write_trainer_model_card(trainer, output_dir=staging, **trainer.card_kwargs)
    except Exception as err:
        if isinstance(err, CheckpointSaveError) or not is_disk_error(err):
            raise
        raise disk_error_message(err, args.output_dir, "the final save") from None
    finally:
        args.push_to_hub = push
