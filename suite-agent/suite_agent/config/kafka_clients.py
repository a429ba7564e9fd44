"""librdkafka's settings for `queue.kafka`'s servers and security: shared by the agent's Kafka
clients and `suite-agent fleet`'s. Pure, and light to import (no confluent-kafka, no models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from suite_agent.config.models import KafkaOptions


def client_settings(servers: str, client_id: str, options: KafkaOptions | None) -> dict[str, Any]:
    """bootstrap.servers, client.id, and the security settings that are given."""
    config: dict[str, Any] = {"bootstrap.servers": servers, "client.id": client_id}
    if options is None:
        config["security.protocol"] = "plaintext"
        return config
    o = options
    optional = {"security.protocol": o.security_protocol, "sasl.mechanism": o.sasl_mechanism,
                "sasl.username": o.sasl_username, "sasl.password": o.sasl_password,
                "ssl.ca.location": o.ssl_ca_location, "ssl.certificate.location": o.ssl_certificate_location,
                "ssl.key.location": o.ssl_key_location, "ssl.key.password": o.ssl_key_password}
    config.update({key: value for key, value in optional.items() if value is not None})
    return config
