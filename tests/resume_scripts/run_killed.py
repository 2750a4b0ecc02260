"""``hf-budgetcl run`` that SIGKILLs itself when training reaches a given iteration (tests/test_resume.py).

Usage: python tests/resume_scripts/run_killed.py KILL_AT_STEP [hf-budgetcl run arguments...]
The kill comes at the start of iteration KILL_AT_STEP + 1: no cleanup, no flush, as in a crash.
"""

import os
import signal
import sys

from hf_budgetcl.cli import main
from hf_budgetcl.training.trainer import BudgetedCLTrainer

kill_at = int(sys.argv[1])
training_step = BudgetedCLTrainer.training_step


def training_step_or_die(self, model, inputs, num_items_in_batch=None):
    if self.state.global_step >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(self, model, inputs, num_items_in_batch)


BudgetedCLTrainer.training_step = training_step_or_die
sys.exit(main(["run", *sys.argv[2:]]))
