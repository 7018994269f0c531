"""The flow language: definitions, validation, filters, templates, rendering. Pure: no Kafka, no HTTP."""
