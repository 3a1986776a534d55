from viommu.cli import run

run()
