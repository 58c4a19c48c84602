"""Serving: `python -m rald_fast.serve --model ARTIFACT` (command.py), an HTTP service on Ray Serve with
dynamic batching across requests, safe because the served model is batch-independent (service.py).
docs/SERVE.md has the endpoints, the options and the load test."""
