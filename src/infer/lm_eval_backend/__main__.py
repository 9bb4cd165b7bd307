"""``python -m infer.lm_eval_backend ...`` = ``infer-lm-eval ...``."""

from infer.lm_eval_backend.cli import main

main()
