"""Key managers (local, Barbican, castellan), the key lease and consumers, os-brick's rule."""
