"""The package as shipped: its API reference, conventions, import graph, wheel, README."""
