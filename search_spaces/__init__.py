"""Attention design spaces: the spec of one design, and the spaces that sample specs."""
from search_spaces.spec import ArchSpec, LayerSpec, uniform

__all__ = ["ArchSpec", "LayerSpec", "uniform"]
