"""Queue: RQ jobs, the worker processes that run them, and their supervision."""
