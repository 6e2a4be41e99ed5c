"""The imgcrypt command as a person uses it: terminal, JSON, sources, properties."""
