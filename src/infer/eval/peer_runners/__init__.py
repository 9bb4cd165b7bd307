"""Standalone runner scripts for peer engines (vLLM CPU, OpenVINO GenAI, HF transformers).

Each file here is executed as a script by the peer's OWN interpreter (its venv), never
imported by infer: ``<venv>/bin/python <runner>.py job.json result.json``. They share only
``peer_io.py`` (stdlib only). The job/result JSON protocol is described in ``peer_io.py``;
``infer.eval.peers`` writes the job, starts the runner and reads the result.
"""
