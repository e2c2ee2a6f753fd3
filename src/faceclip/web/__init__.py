"""The web demo (``faceclip serve``): see :mod:`faceclip.web.app`."""

from faceclip.web.app import DemoBackend, DemoResult, ServeOptions, build_app, serve

__all__ = ["DemoBackend", "DemoResult", "ServeOptions", "build_app", "serve"]
