"""AiiDA-free core: configuration, datasets, metrics and a plain Pacemaker runner (no ``aiida`` imports here)."""
