"""Run control and trigger configuration over MQTT."""
