"""The HTTP endpoint and its page: `ragless serve --index DIR` (see `app.py` for the routes).

Importing this package is light (the CLI reads `ServeConfig` for its flags); FastAPI loads with `ragless.serve.app`.
"""

from ragless.serve.config import ServeConfig

__all__ = ["ServeConfig"]
