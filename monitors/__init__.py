"""Spill-by-spill beam and detector figures, Prometheus metrics and alarms."""
