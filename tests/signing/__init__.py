"""Signatures: schemes, certificates, storage in properties, Glance/cursive compatibility."""
