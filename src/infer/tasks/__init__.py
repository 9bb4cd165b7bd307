"""Tasks run.py can perform with a built engine (task=generate, ...)."""
