"""The dispatcher: concurrent HTTP delivery, signing, retries, address policy, outcomes."""
