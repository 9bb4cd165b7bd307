"""OpenAI-compatible HTTP serving: ``python run.py task=serve`` (see README, "Serving")."""

from infer.serve.app import create_app
from infer.serve.engine_loop import EngineLoop
from infer.serve.server import make_server, start_in_thread

__all__ = ["EngineLoop", "create_app", "make_server", "start_in_thread"]
