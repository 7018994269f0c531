"""The processor: per-profile flow state in Faust tables, triggers, delays, splits, webhook-due records."""
