"""The image and volume services: Glance plugins, hooks, faults, metadefs, catalogue jobs."""
