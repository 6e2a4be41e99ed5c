"""Hostile input, secrets, crashes and concurrency."""
