"""Helpers the tests share: servers they start, oracles, header kits, PKI."""
