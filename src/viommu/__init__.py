"""viommu: the host IOMMU / virtual IOMMU capability framework, in Python.

A virtual IOMMU must never promise a guest more than the host IOMMUs of the
assigned devices can do. This package discovers host IOMMUs, decodes their
registers, models QEMU's vIOMMUs and their checks, and answers operators'
questions before a VM starts, hotplugs or migrates.
"""

__version__ = "0.1.0"
