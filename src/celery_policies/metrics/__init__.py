"""Prometheus metrics: what a worker counts of its policies' decisions, and what an exporter
reads of the dead-letter queues. prometheus_client is imported only by the modules that serve
(the ``metrics`` extra); ``names`` is plain data that anything may read."""
