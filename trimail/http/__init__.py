"""The HTTP surface: the Quart-Trio app, its gate and routes, and serving it with Hypercorn."""

from .app import TrimailApp, create_app

__all__ = ["TrimailApp", "create_app"]
