"""Local runtime: embedded AWS backend, provisioning, event sources and the API server.

Run it with ``make run`` (``python -m infrastructure.local``). Importing this package
has no side effects; the app module is imported only by the orchestrator, after it has
set the environment the app reads.
"""
