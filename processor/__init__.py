"""Flowhook: Kafka-native flow webhooks.

Storefront events on Kafka start flows per profile; webhook steps become signed HTTP
deliveries; every outcome lands on a results topic. See README.md for the tour.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
