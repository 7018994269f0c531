"""Flowhook on one machine: embedded broker, Apache Kafka runner, receiver, stack, demo, dev."""
