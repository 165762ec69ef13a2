"""Exit codes and the start-up error, shared by every command."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_FAILURE = 3
EXIT_INTERRUPTED = 130  # a second Ctrl-C (daemon), or Ctrl-C in transcribe


class StartupError(Exception):
    """The daemon could not start (model, device); the message says why."""
