"""Declarative register tables and codecs for VT-d, AMD-Vi and SMMUv3; no I/O."""
