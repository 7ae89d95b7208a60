"""Mixtera's built-in plugins. They use the same hooks as any third-party package."""
