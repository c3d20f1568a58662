"""Local Kafka (KRaft) and PostgreSQL for development and tests, without Docker."""
