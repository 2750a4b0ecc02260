"""Build the cached stage-1 VLM base ahead of a run (the recipes otherwise build it on first use).

    python scripts/build_vlm_base.py --family llava --size default
    python scripts/build_vlm_base.py --family qwen2vl --size default --cache_dir /data/bases

Prints the base's folder; its ``stage1.json`` holds the build config, training loss and held-out eval. An existing
base with the same config is reused, not rebuilt. Same as ``python -m hf_budgetcl.training.pretrained_base``.
"""

from hf_budgetcl.training.pretrained_base import main

if __name__ == "__main__":
    main()
