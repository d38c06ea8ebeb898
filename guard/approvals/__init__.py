"""Step-up approvals: the service, webhook signatures and deliveries, cross-instance wake-ups."""
