"""``viommu plan``: the explicit vIOMMU properties that fit every given host.

viommu plan VM --host A [--host B ...] [--format qemu|libvirt|json] [--qemu-version X.Y]

The artefact (the rewritten command line, or the ``<iommu>`` element and a
unified diff of the domain XML) goes to stdout; the reason for each choice
to stderr. Exit 1 with the reason when no configuration fits.
"""

from __future__ import annotations

import sys

from viommu.commands._common import add_vm_argument

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from viommu.argspec import Args
    from viommu.models.base import DeviceSpec
    from viommu.vm import VMConfig


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="compute explicit vIOMMU properties that fit every given host",
        description="Compute the vIOMMU properties that fit the VM's devices on every given host, as "
        "wide as they allow, all explicit (so the guest ABI no longer depends on QEMU's defaults), "
        "and emit them as a QEMU command line or a libvirt <iommu> element with a diff of the domain.",
    )
    add_vm_argument(parser)
    parser.add_argument("--host", action="append", required=True, metavar="SNAPSHOT",
                        help="a host the VM may run on (snapshot JSON, sysfs capture or bundled profile "
                        "name); repeat for a migration pool")
    parser.add_argument("--format", default="qemu", choices=("qemu", "libvirt", "json"),
                        help="qemu: the rewritten command line (default); libvirt: the <iommu> element "
                        "and a diff of the domain XML; json: the plan for scripts")
    parser.add_argument("--qemu-version", default="10.0", metavar="X.Y",
                        help="QEMU release to model (default 10.0)")
    parser.set_defaults(handler=run)


def run(args: Args) -> int:
    from viommu.commands._common import load_host, load_vm, qemu_version
    from viommu.preflight import plan_vm
    from viommu.render import dump_json

    version = qemu_version(args.qemu_version)
    vm = load_vm(args)
    hosts = [load_host(h) for h in args.host]
    report = plan_vm(vm, hosts, version=version)
    if args.format == "json":
        data = report.to_json()
        data["emitted"] = emitted(vm, report.plan.spec) if report.plan is not None and report.fits else None
        dump_json(data)
        return 0 if report.fits else 1
    if not report.fits or report.plan is None:
        sys.stderr.write(f"viommu plan: [{report.code}] {report.message}\n")
        return 1
    for choice in report.plan.choices:
        sys.stderr.write(f"# {choice.name}={choice.value}: {choice.reason}\n")
    spec = report.plan.spec
    if args.format == "qemu":
        sys.stdout.write(qemu_text(vm, spec))
    else:
        sys.stdout.write(libvirt_text(vm, spec))
    return 0


def qemu_text(vm: VMConfig, spec: DeviceSpec) -> str:
    """The whole rewritten command line for a QEMU VM; the ``-device`` option for any other."""
    from viommu.frontends.emit import rewrite_argv, shell_join

    if vm.kind == "qemu" and vm.argv:
        return shell_join(rewrite_argv(vm, spec))
    return shell_join(["-device", str(spec)])


def libvirt_text(vm: VMConfig, spec: DeviceSpec) -> str:
    """The ``<iommu>`` element (the replacement), then for a libvirt VM the unified diff."""
    from viommu.frontends.emit import libvirt_iommu, libvirt_replace

    element = libvirt_iommu(spec).rstrip("\n") + "\n"
    if vm.kind != "libvirt":
        return element
    _, diff = libvirt_replace(vm, spec)
    return element + "\n" + diff


def emitted(vm: VMConfig, spec: DeviceSpec) -> dict[str, Any]:
    """Both emitter outputs for JSON; one that cannot express the plan says why."""
    from viommu.errors import InputError
    from viommu.frontends.emit import libvirt_iommu, libvirt_replace, rewrite_argv

    out: dict[str, Any] = {"device": ["-device", str(spec)]}
    if vm.kind == "qemu" and vm.argv:
        out["argv"] = rewrite_argv(vm, spec)
    try:
        out["libvirt_iommu"] = libvirt_iommu(spec)
        if vm.kind == "libvirt":
            out["libvirt_diff"] = libvirt_replace(vm, spec)[1]
    except InputError as exc:
        out["libvirt_error"] = exc.message
    return out

