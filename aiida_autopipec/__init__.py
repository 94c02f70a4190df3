"""AiiDA plugin that fits Atomic Cluster Expansion (ACE) potentials with Pacemaker, under full provenance."""

__version__ = "0.1.0"
