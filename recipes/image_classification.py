"""Budgeted online continual learning on an image-classification stream.

python recipes/image_classification.py --config recipes/configs/digits_er.yaml
accelerate launch --multi_gpu --num_processes 2 recipes/image_classification.py --config ... --use_cpu true
"""

import sys

from hf_budgetcl.cli import run_guarded
from hf_budgetcl.runs.image_classification import run

if __name__ == "__main__":
    sys.exit(run_guarded(lambda: run(sys.argv[1:])))
