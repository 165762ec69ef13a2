"""Reaching the broker: credentials from their files, TLS, and the reconnect delay."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

from daemon.config import MqttSettings, credential_path


def read_password(settings: MqttSettings, config_path: Path) -> str | None:
    """The password from its file (first line); never logged."""
    if not settings.password_file:
        return None
    return credential_path(settings.password_file, config_path).read_text(encoding="utf-8").strip()


def tls_context(settings: MqttSettings, config_path: Path) -> ssl.SSLContext | None:
    """TLS with the broker's certificate and host name verified (unless tls_insecure)."""
    if not settings.tls:
        return None
    ca = credential_path(settings.ca_file, config_path) if settings.ca_file else None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if settings.cert_file:
        context.load_cert_chain(
            str(credential_path(settings.cert_file, config_path)), str(credential_path(settings.key_file, config_path))
        )
    if settings.tls_insecure:
        context.check_hostname = False
    return context


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Full-jitter exponential backoff: uniform in [low, min(high, low * 2**attempt)]."""
    cap = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(low, max(low, cap))
