"""The atomic finish: after a kill (SIGKILL, SIGINT) at any point of the final save, or a full disk during it,
``output_dir`` is either the complete new run or the intact earlier one.

The run trains once in this process; each fault repeats only ``save_final`` in a forked child (no re-import, no
retraining), which kills itself after a seeded random number of Python calls into the save.
"""

import errno
import json
import os
import random
import resource
import shutil
import signal
import sys

import pytest
import torch
from helpers import digits_trainer
from safetensors.torch import load_file

from hf_budgetcl.cli import run_guarded
from hf_budgetcl.hub.push import push_output_dir
from hf_budgetcl.training import finish
from hf_budgetcl.training.finish import old_dir, recover_output_dir, staging_dir
from hf_budgetcl.utils.run_marker import MARKER_NAME, read_marker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child per fault")


def _snapshot(folder):
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(folder)
        for f in files
    }


def _in_child(fn, stderr_path=None):
    """Run ``fn`` in a forked child; returns its wait status (the child never returns into pytest)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            if stderr_path:
                fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 2)
                sys.stderr = os.fdopen(2, "w", buffering=1)
            code = fn() or 0
        except KeyboardInterrupt:  # SIGINT
            code = 70
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 71
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def _calls_of(fn):
    """How many Python calls ``fn`` makes (the range the kill points are drawn from), and the calls at which the
    staged folder starts being installed and at which it is exchanged with the earlier one."""
    count, phases = [0], {}

    def profile(frame, event, arg):
        if event == "call":
            count[0] += 1
            if frame.f_code.co_name in ("_install", "exchange"):
                phases.setdefault(frame.f_code.co_name, count[0])

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count[0], phases["_install"], phases["exchange"]


def _counted_in_child(fn):
    read, write = os.pipe()

    def count():
        os.write(write, json.dumps(_calls_of(fn)).encode())

    assert _in_child(count) == 0
    os.close(write)
    with os.fdopen(read) as f:
        return json.loads(f.read())


def _kill_after(n_calls, sig):
    count = [0]

    def profile(frame, event, arg):
        if event == "call":
            count[0] += 1
            if count[0] == n_calls:
                sys.setprofile(None)
                os.kill(os.getpid(), sig)

    sys.setprofile(profile)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A trained trainer whose earlier run is installed in ``out`` (plus a checkpoint of the new run), a pristine
    copy of that folder, and the new run's results and weights (different from the earlier run's)."""
    root = tmp_path_factory.mktemp("finish")
    trainer = digits_trainer(root, per_class_train=6, per_class_test=2, eval_period=30)
    trainer.train()  # the earlier run, finished
    out = trainer.args.output_dir
    assert read_marker(out) is not None
    os.makedirs(os.path.join(out, "checkpoint-5"))
    with open(os.path.join(out, "checkpoint-5", "cl_state.json"), "w") as f:
        f.write("{}")
    pristine = str(root / "pristine")
    shutil.copytree(out, pristine)
    with torch.no_grad():  # the new run: other weights and other results
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.results = {**trainer.results, "seed": 12345}
    new_weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return trainer, out, pristine, new_weights


def _reset(out, pristine):
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pristine, out)


def _assert_new_or_earlier(out, pristine, new_weights):
    marker = read_marker(out)
    assert marker is not None, "the folder is no complete run"
    results = json.loads(open(os.path.join(out, "results.json")).read())
    if results["seed"] == 12345:  # the complete new run: every file the marker lists, the new weights
        assert all(os.path.isfile(os.path.join(out, name)) for name in marker["files"])
        assert {"model.safetensors", "config.json", "README.md", "stream.json"} <= set(marker["files"])
        weights = load_file(os.path.join(out, "model.safetensors"))
        assert all(torch.equal(weights[k], new_weights[k]) for k in weights)
        return "new"
    assert _snapshot(out) == _snapshot(pristine)  # the earlier run, byte for byte, with the new run's checkpoint
    return "earlier"


def test_killed_anywhere_in_the_final_save_leaves_the_new_or_the_earlier_run(finished):
    trainer, out, pristine, new_weights = finished
    _reset(out, pristine)
    total, install, exchange = _counted_in_child(trainer.save_final)  # counted as the children will count
    assert 100 < install < exchange < total
    _reset(out, pristine)
    rng = random.Random(15)
    outcomes = []
    for i in range(10):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        # Points anywhere in the save, and in its short last phase: up to the exchange, and from it on.
        point = rng.randint(*[(1, total), (install, exchange), (exchange, total)][min(i // 4, 2)])

        def save(point=point, sig=sig):
            _kill_after(point, sig)
            trainer.save_final()
            return 0

        status = _in_child(save)
        died = os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 70  # SIGINT: KeyboardInterrupt
        outcome = _assert_new_or_earlier(out, pristine, new_weights)
        assert died or outcome == "new"
        outcomes.append(outcome)
        # What the next run does first: a checkpoint caught in the former folder comes back, nothing is left beside.
        recover_output_dir(out)
        assert _assert_new_or_earlier(out, pristine, new_weights) == outcome
        assert os.path.isfile(os.path.join(out, "checkpoint-5", "cl_state.json"))
        assert not os.path.exists(staging_dir(out)) and not os.path.exists(old_dir(out))
        _reset(out, pristine)
    # The random points fall both before and after the moment the new run is installed.
    assert "earlier" in outcomes and "new" in outcomes, outcomes
    trainer.save_final()
    assert _assert_new_or_earlier(out, pristine, new_weights) == "new"
    assert not os.path.exists(staging_dir(out))
    assert os.path.isdir(os.path.join(out, "checkpoint-5"))  # the run's own checkpoints move into the new folder


@pytest.mark.parametrize("where", ["weights", "marker"])
def test_a_full_disk_in_the_final_save_is_one_line_and_keeps_the_earlier_run(finished, tmp_path, where):
    """weights: a real write limit (RLIMIT_FSIZE 40 kB: safetensors' write of the 83 kB model fails with EFBIG, as on
    a small full disk); marker: the last write of the save fails with ENOSPC (patched: no small filesystem here)."""
    trainer, out, pristine, _ = finished
    _reset(out, pristine)
    err = tmp_path / "stderr"

    def save():
        if where == "weights":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        else:

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            finish.write_json_atomic = full
        return run_guarded(trainer.save_final)

    status = _in_child(save, str(err))
    text = err.read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1, text
    lines = [line for line in text.splitlines() if line.startswith("hf-budgetcl: error:")]
    assert len(lines) == 1 and "Traceback" not in text and "SafetensorError" not in text, text
    reason = "File too large" if where == "weights" else "No space left on device"
    assert "the final save" in lines[0] and reason in lines[0] and "earlier finished run" in lines[0]
    assert _snapshot(out) == _snapshot(pristine)
    assert not os.path.exists(staging_dir(out))


def test_push_refuses_a_folder_without_the_completion_marker(finished, tmp_path):
    trainer, out, pristine, _ = finished
    half = tmp_path / "half"
    shutil.copytree(pristine, half)
    os.remove(half / MARKER_NAME)  # every file there, but the finish never completed
    with pytest.raises(FileNotFoundError, match=MARKER_NAME):
        push_output_dir(half, "user/repo", api=object())
