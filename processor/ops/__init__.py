"""Operating the workers: metrics, health and readiness endpoints, profile lookups, lag."""
