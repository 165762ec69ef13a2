"""The roomscribe process: CLI, config, lifecycle, MQTT, logging."""

__version__ = "0.1.0"
