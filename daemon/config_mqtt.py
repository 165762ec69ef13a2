"""Config sections of the MQTT side: the broker, Home Assistant discovery, Hermes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from daemon.config_base import Section


class MqttSettings(Section):
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    prefix: str = Field("roomscribe", pattern=r"^[^#+]+$", description="Topic prefix; no wildcards.")
    client_id: str = Field("", description="MQTT client id; empty means roomscribe-<hostname>.")
    username: str = Field("", description="Username; empty for anonymous.")
    password_file: str = Field(
        "", description="File holding the password; a bare name is looked up in $CREDENTIALS_DIRECTORY."
    )
    tls: bool = Field(False, description="Connect over TLS (port 8883 usually); the server's name is verified.")
    ca_file: str = Field("", description="CA bundle for the broker's certificate; empty: the system's CAs.")
    cert_file: str = Field("", description="Client certificate (PEM) for brokers that require one.")
    key_file: str = Field("", description="Its private key; a bare name is looked up in $CREDENTIALS_DIRECTORY.")
    tls_insecure: bool = Field(False, description="Skip verifying the broker's host name (testing only).")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version; auto: 5, and 3.1.1 when the broker refuses 5."
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles up to the max.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")
    max_pending: int = Field(
        10000, ge=1, description="Messages in memory while the broker is away; past it, utterances wait on disk."
    )
    outbox_max_entries: int = Field(100_000, ge=1, description="Unacknowledged utterances kept on disk at most.")
    outbox_max_age_s: float = Field(7 * 86400, gt=0, description="Older unacknowledged utterances are dropped.")

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file/key_file need tls = true")
        return self


class HomeAssistantSettings(Section):
    enabled: bool = Field(False, description="Announce the daemon and its rooms by MQTT discovery.")
    discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[^#+]+$", description="Home Assistant's discovery prefix."
    )


class HermesSettings(Section):
    enabled: bool = Field(False, description="Also publish each utterance as hermes/asr/textCaptured.")
