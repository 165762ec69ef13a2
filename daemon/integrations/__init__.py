"""Doors other systems come through, each off by default: Home Assistant's MQTT discovery
(homeassistant.py) and Snips/Rhasspy Hermes audio in and text out (hermes.py)."""
