"""`flowhook bench`: each stage measured beside a same-run baseline."""
