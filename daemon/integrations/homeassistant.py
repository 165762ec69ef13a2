"""Home Assistant MQTT discovery, off by default.

One device per daemon; per room an ``event`` entity (an event per finished utterance) and a
``sensor`` holding the last text. A state is capped at 255 characters, so the sensor's state
is the text cut there and the whole text rides in its attributes. Entities are available
while the daemon's status topic says ``online`` (``offline`` from the will and ``stopped``
from a clean stop both count as unavailable). The configs are retained and sent again on
every connect and whenever Home Assistant announces itself (``<discovery_prefix>/status``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from daemon import __version__

if TYPE_CHECKING:
    from daemon.config_mqtt import HomeAssistantSettings
    from daemon.mqtt import Publisher

STATE_MAX_CHARS = 255
# What an event and the sensor's attributes carry from the utterance payload (docs/mqtt.md).
FIELDS = ("id", "text", "language", "start", "end", "duration_s", "confidence", "parts")


def node_id(client_id: str) -> str:
    """The client id in the characters a discovery topic allows."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", client_id)


def _fields_template(extra: str = "") -> str:
    pairs = ", ".join(f'"{name}": value_json.{name}' for name in FIELDS)
    return "{{ {" + extra + pairs + "} | tojson }}"


def discovery_messages(
    discovery_prefix: str, prefix: str, client_id: str, rooms: list[str], model: str
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) for every entity: retained, QoS 1."""
    node = node_id(client_id)
    device = {
        "identifiers": [f"roomscribe_{node}"],
        # Home Assistant names entities <device name>_<entity name>: the default client id
        # (roomscribe-<host>) already says roomscribe, so it is not said twice.
        "name": client_id if client_id.startswith("roomscribe") else f"roomscribe {client_id}",
        "manufacturer": "roomscribe",
        "model": model,
        "sw_version": __version__,
    }
    common: dict[str, Any] = {
        "device": device,
        "origin": {"name": "roomscribe", "sw_version": __version__},
        "availability": [
            {"topic": f"{prefix}/status", "value_template": "{{ 'online' if value == 'online' else 'offline' }}"}
        ],
    }
    base = discovery_prefix.rstrip("/")
    messages: list[tuple[str, dict[str, Any]]] = []
    for room in rooms:
        utterances = f"{prefix}/{room}/utterance"
        event = {
            **common,
            "name": f"{room} utterance",
            "unique_id": f"{node}_{room}_utterance",
            "state_topic": utterances,
            "event_types": ["utterance"],
            "value_template": _fields_template('"event_type": "utterance", '),
            "icon": "mdi:account-voice",
        }
        sensor = {
            **common,
            "name": f"{room} last text",
            "unique_id": f"{node}_{room}_last_text",
            "state_topic": utterances,
            "value_template": "{{ value_json.text[:" + str(STATE_MAX_CHARS) + "] }}",
            "json_attributes_topic": utterances,
            "json_attributes_template": _fields_template(),
            "icon": "mdi:text-box-outline",
        }
        messages.append((f"{base}/event/{node}/{room}_utterance/config", event))
        messages.append((f"{base}/sensor/{node}/{room}_last_text/config", sensor))
    return messages


class Discovery:
    """Announces the entities on every connect and when Home Assistant (re)starts."""

    def __init__(
        self,
        settings: HomeAssistantSettings,
        publisher: Publisher,
        rooms: Callable[[], list[str]],
        model: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.rooms = rooms
        self.model = model
        self.log = structlog.get_logger().bind(component="homeassistant")
        publisher.on_connect.append(self.announce)
        publisher.subscribe(f"{settings.discovery_prefix}/status", self._status)

    def announce(self) -> None:
        """The discovery configs, retained."""
        p = self.publisher
        messages = discovery_messages(self.settings.discovery_prefix, p.prefix, p.client_id, self.rooms(), self.model())
        for topic, payload in messages:
            p.submit_json(topic, payload, qos=1, retain=True, replace=True)
        self.log.info("home assistant discovery announced", entities=len(messages))

    def _status(self, topic: str, payload: bytes) -> None:
        if payload.strip() == b"online":  # Home Assistant (re)started: it forgot non-retained configs
            self.announce()
