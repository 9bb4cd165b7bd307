"""``infer-lm-eval`` (or ``python -m infer.lm_eval_backend``): lm-eval's command line with the
``infer`` model registered, e.g.

    infer-lm-eval --model infer --model_args attention=radix,quant=int8 --tasks arc_easy
"""

from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    from infer.lm_eval_backend import register

    register()
    cli_evaluate()


if __name__ == "__main__":
    main()
