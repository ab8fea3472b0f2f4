"""Delivery: the dispatcher, the SMTP transport, the message builder and the retry policy."""
