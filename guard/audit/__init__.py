"""The tamper-evident audit trail: hashing and verification, trails, the durable writer and journal."""
