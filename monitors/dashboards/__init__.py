"""deploy/ as code: Grafana dashboards, Prometheus scrape and rule files, the compose file."""
