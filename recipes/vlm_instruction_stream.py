"""Budgeted online continual instruction tuning of a vision-language model on a concept-incremental VQA stream.

python recipes/vlm_instruction_stream.py --config recipes/configs/easyvqa_llava_tiny_alsar.yaml
accelerate launch recipes/vlm_instruction_stream.py --config recipes/configs/easyvqa_llava_tiny_alsar.yaml
accelerate launch --config_file recipes/accelerate/multi_cpu_2proc.yaml recipes/vlm_instruction_stream.py ...
"""

import sys

from hf_budgetcl.cli import run_guarded
from hf_budgetcl.runs.vlm_instruction_stream import run

if __name__ == "__main__":
    sys.exit(run_guarded(lambda: run(sys.argv[1:])))
