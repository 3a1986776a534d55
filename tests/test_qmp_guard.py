"""The QMP hotplug guard against a real QEMU 10.0 process (q35, intel-iommu, pcie-root-ports).

Each test starts ``qemu-system-x86_64 -M q35 -accel tcg -S`` with a QMP socket,
runs the guard (library or CLI), then looks at QEMU's side itself with a raw
QMP client written here (no code under test): ``query-pci`` and
``qom-list /machine/peripheral`` before and after. QEMU's own refusal texts
are obtained by sending QEMU the same ``device_add`` directly.

There is no VFIO device on this machine: the "accepted and really added" case
checks a real host device from a bundled profile and sends the test-only
stand-in ``driver_override="edu"`` (see :class:`HotplugRequest`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from viommu.cli import main
from viommu.frontends.qmp_guard import (
    HotplugRequest,
    PluggedDevice,
    QmpError,
    QmpGuard,
    VMState,
    decide,
    guarded_hotplug,
)
from viommu.host.profiles import default_profile_name, load_profile
from viommu.models.base import DeviceSpec, QemuVersion

#: The default profile is a real 39-bit VT-d laptop (intel-cometlake-u-xps13-7390).
PROFILE = default_profile_name()
BDF = "0000:01:00.0"
#: QEMU's edu device (hw/misc/edu.c): vendor PCI_VENDOR_ID_QEMU 0x1234, device 0x11e8.
EDU_IDS = (0x1234, 0x11E8)


# --- a raw QMP client, independent of the code under test ---------------------------------------


def qmp(sock: str, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """One command on a fresh connection: {"return": ...} or {"error": ...}."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock)
        stream = s.makefile("rwb")

        def reply() -> dict[str, Any]:
            while True:
                msg = json.loads(stream.readline())
                if "return" in msg or "error" in msg:
                    return msg

        greeting = json.loads(stream.readline())
        while "QMP" not in greeting:
            # A reply QEMU still owed a connection that closed while QEMU was stopped: the
            # monitor's chardev hands it to the next client, ahead of the greeting.
            assert str(greeting.get("id", "")).startswith("__qmp#"), greeting
            greeting = json.loads(stream.readline())
        for c, a in (("qmp_capabilities", None), (cmd, args)):
            stream.write(json.dumps({"execute": c, **({"arguments": a} if a else {})}).encode() + b"\n")
            stream.flush()
            out = reply()
        return out


def peripheral(sock: str) -> set[str]:
    return {e["name"] for e in qmp(sock, "qom-list", {"path": "/machine/peripheral"})["return"]
            if e["type"].startswith("child<")}


def pci_devices(sock: str) -> list[dict[str, Any]]:
    """Every device query-pci lists, bridges' secondary buses included."""
    out: list[dict[str, Any]] = []
    stack = list(qmp(sock, "query-pci")["return"])
    while stack:
        for dev in stack.pop()["devices"]:
            out.append(dev)
            if dev.get("pci_bridge", {}).get("devices"):
                stack.append({"devices": dev["pci_bridge"]["devices"]})
    return out


@dataclass
class Vm:
    proc: subprocess.Popen[bytes]
    sock: str

    def state(self) -> tuple[set[str], str]:
        return peripheral(self.sock), json.dumps(pci_devices(self.sock), sort_keys=True)


@pytest.fixture
def start_vm(qemu_binary: Any) -> Iterator[Any]:
    started: list[Vm] = []
    tmp = tempfile.mkdtemp(prefix="vq", dir="/tmp")  # unix socket paths must stay short

    def start(viommu: str | None, *extra: str, running: bool = False) -> Vm:
        sock = os.path.join(tmp, f"q{len(started)}.sock")
        argv = [qemu_binary.path, "-M", "q35", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
                *(["-device", viommu] if viommu else []),
                "-device", "pcie-root-port,id=rp1,chassis=1", "-device", "pcie-root-port,id=rp2,chassis=2",
                *extra, "-qmp", f"unix:{sock},server=on,wait=off"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        vm = Vm(proc, sock)
        started.append(vm)
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"QEMU did not start: {why}")
            time.sleep(0.02)
        # QEMU binds the socket file a moment before it listens: wait for a greeting.
        while True:
            try:
                qmp(sock, "query-status")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "QEMU never listened on its QMP socket"
                time.sleep(0.02)
        if running:
            # Let the firmware number the root ports' buses, so query-pci shows what sits behind them.
            assert "return" in qmp(sock, "cont")
            def numbered() -> bool:
                bridges = [d for d in pci_devices(sock) if "pci_bridge" in d]
                return all(d["pci_bridge"]["bus"]["secondary"] for d in bridges)

            while not numbered():
                assert time.monotonic() < deadline, "firmware never numbered the buses"
                time.sleep(0.05)
        return vm

    yield start
    for vm in started:
        if vm.proc.poll() is None:
            vm.proc.kill()
        vm.proc.wait()
        if vm.proc.stderr:
            vm.proc.stderr.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def inventory() -> Any:
    return load_profile(PROFILE)


# --- against the real QEMU ------------------------------------------------------------------------


@pytest.mark.qemu
def test_aw_bits_48_over_39_bit_host_is_refused_and_nothing_is_sent(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=48,caching-mode=on")
    before = vm.state()
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1"), inventory)
    host_aw = inventory.device(BDF).caps.aw_bits
    assert host_aw == 39
    assert not result.accepted
    assert result.code == "aw-bits-exceeds-host"
    # Text: vtd_check_hiod's "aw-bits %d > host aw-bits %d" behind vfio_pci_realize's 10.0 prefix
    # (reference/qemu-framework.md §2, hw/i386/intel_iommu.c).
    assert result.message == f"vfio {BDF}: Failed to set vIOMMU: aw-bits 48 > host aw-bits {host_aw}"
    assert result.vm.viommu.props["aw-bits"] == "48"
    assert result.vm.qemu_version.at_least(10, 0)
    assert guard.sent == [] and result.sent == []
    assert "device_add" not in guard.log
    assert vm.state() == before


@pytest.mark.qemu
def test_fitting_device_is_really_added(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on", running=True)
    assert "hostdev0" not in peripheral(vm.sock)
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    assert result.accepted, result.message
    assert result.decision.detail["host"] == BDF
    assert guard.sent == [{"execute": "device_add",
                           "arguments": {"driver": "edu", "id": "hostdev0", "bus": "rp1"}}]
    assert result.reply == {}
    added = [d for d in pci_devices(vm.sock) if d.get("qdev_id") == "hostdev0"]
    assert len(added) == 1
    assert (added[0]["id"]["vendor"], added[0]["id"]["device"]) == EDU_IDS
    assert "hostdev0" in peripheral(vm.sock)


@pytest.mark.qemu
def test_vfio_request_sends_vfio_pci(start_vm: Any, inventory: Any) -> None:
    """Without the stand-in the guard sends vfio-pci; on this machine QEMU then fails to open the
    host device, and the guard reports QEMU's own text (exit 1)."""
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on")
    before = vm.state()
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1"), inventory)
    assert result.decision.accepted
    assert guard.sent == [{"execute": "device_add",
                           "arguments": {"driver": "vfio-pci", "host": BDF, "id": "hostdev0", "bus": "rp1"}}]
    direct = qmp(vm.sock, "device_add", {"driver": "vfio-pci", "host": BDF, "id": "hostdev1", "bus": "rp2"})
    assert not result.accepted and result.code == "device-add-failed"
    assert result.qemu_error == direct["error"]["desc"].replace("hostdev1", "hostdev0")
    assert vm.state() == before


@pytest.mark.qemu
def test_caching_mode_off_is_refused_with_qemus_text(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39")
    before = vm.state()
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1"), inventory)
    assert guard.sent == []
    assert vm.state() == before
    # QEMU 10.0 refuses in pc_hotplug_allowed, before touching the host: ask it directly.
    direct = qmp(vm.sock, "device_add", {"driver": "vfio-pci", "host": BDF, "id": "hostdev0", "bus": "rp1"})
    assert result.code == "caching-mode-required"
    assert result.message == direct["error"]["desc"]
    assert vm.state() == before


@pytest.mark.qemu
def test_duplicate_id_is_refused_before_sending(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on")
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="rp2", bus="rp1"), inventory)
    direct = qmp(vm.sock, "device_add", {"driver": "vfio-pci", "host": BDF, "id": "rp2", "bus": "rp1"})
    assert guard.sent == []
    assert result.code == "device-exists"
    assert result.message == direct["error"]["desc"]


@pytest.mark.qemu
def test_iommufd_object_must_exist(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on", "-object", "iommufd,id=fd0")
    guard = QmpGuard(vm.sock)
    missing = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", iommufd="nofd"), inventory)
    direct = qmp(vm.sock, "device_add",
                 {"driver": "vfio-pci", "host": BDF, "id": "hostdev0", "bus": "rp1", "iommufd": "nofd"})
    assert guard.sent == []
    assert missing.code == "iommufd-object-missing"
    assert missing.message == direct["error"]["desc"]
    ok = QmpGuard(vm.sock).run(HotplugRequest(BDF, id="hostdev0", bus="rp1", iommufd="fd0"), inventory,
                               dry_run=True)
    assert ok.accepted and ok.sent == []
    assert ok.vm.iommufd_objects == ("fd0",)
    assert ok.decision.detail["backend"] == "iommufd"
    assert ok.device_add["iommufd"] == "fd0"


@pytest.mark.qemu
def test_dry_run_sends_nothing(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on,id=vi")
    before = vm.state()
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory,
                       dry_run=True)
    assert result.accepted and guard.sent == []
    assert result.vm.viommu_path == "/machine/peripheral/vi"  # with id=, under peripheral
    assert vm.state() == before


@pytest.mark.qemu
def test_qemu_killed_between_read_and_send(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on")

    def kill() -> None:
        vm.proc.kill()
        vm.proc.wait()

    guard = QmpGuard(vm.sock, after_read=kill)
    with pytest.raises(QmpError) as info:
        guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    assert vm.proc.returncode == -signal.SIGKILL
    assert info.value.code == "qmp-disconnected"
    assert "\n" not in str(info.value) and vm.sock in str(info.value)
    assert guard.sent == []
    assert "device_add" not in guard.log


@pytest.mark.qemu
def test_qemu_stopped_between_read_and_send_times_out(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on")
    guard = QmpGuard(vm.sock, timeout=0.5, after_read=lambda: os.kill(vm.proc.pid, signal.SIGSTOP))
    try:
        with pytest.raises(QmpError) as info:
            guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    finally:
        os.kill(vm.proc.pid, signal.SIGCONT)
    assert info.value.code == "qmp-timeout"
    assert guard.sent == []
    assert "hostdev0" not in peripheral(vm.sock)


@pytest.mark.qemu
def test_unreadable_viommu_property_fails_closed(
    start_vm: Any, inventory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A property the model's schema names but this QEMU lacks (as with another build)."""
    from viommu.frontends import qmp_guard

    real = qmp_guard._schema
    monkeypatch.setattr(qmp_guard, "_schema", lambda d, v: [*real(d, v), "x-not-in-this-build"])
    vm = start_vm("intel-iommu,aw-bits=39,caching-mode=on")
    guard = QmpGuard(vm.sock)
    with pytest.raises(QmpError) as info:
        guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    assert info.value.code == "viommu-property-unreadable"
    assert "'x-not-in-this-build'" in str(info.value)
    assert guard.sent == []


@pytest.mark.qemu
@pytest.mark.parametrize(("viommu", "code"), [("amd-iommu", "viommu-not-modelled"),
                                              (None, "viommu-not-found")])
def test_unmodelled_or_missing_viommu_fails_closed(start_vm: Any, inventory: Any, viommu: str | None,
                                                   code: str) -> None:
    vm = start_vm(viommu)
    guard = QmpGuard(vm.sock)
    with pytest.raises(QmpError) as info:
        guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    assert info.value.code == code
    assert guard.sent == []
    assert "hostdev0" not in peripheral(vm.sock)


@pytest.mark.qemu
def test_virtio_iommu_fitting_device_is_added(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("virtio-iommu-pci", running=True)
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    assert result.accepted, result.message
    assert result.vm.viommu.driver == "virtio-iommu-pci"
    # q35 machine types from 9.0 set aw-bits=39 (pc_q35_compat_defaults); read back from QEMU.
    assert result.vm.viommu.props["aw-bits"] == "39"
    assert [d.get("qdev_id") for d in pci_devices(vm.sock)].count("hostdev0") == 1


@pytest.mark.qemu
def test_virtio_iommu_granule_the_host_lacks_is_refused(start_vm: Any, inventory: Any) -> None:
    vm = start_vm("virtio-iommu-pci,granule=64k")
    before = vm.state()
    assert not inventory.device(BDF).caps.page_size_mask & (1 << 16)  # a 4K/2M/1G VT-d host
    guard = QmpGuard(vm.sock)
    result = guard.run(HotplugRequest(BDF, id="hostdev0", bus="rp1", driver_override="edu"), inventory)
    assert not result.accepted and result.code == "frozen-granule-unsupported"
    assert result.vm.viommu.props["granule"] == "64k"
    assert guard.sent == []
    assert vm.state() == before


@pytest.mark.qemu
def test_cli_refusal_and_acceptance(start_vm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    vm = start_vm("intel-iommu,aw-bits=48,caching-mode=on")
    base = ["hotplug", "--qmp", vm.sock, "--host", "01:00.0", "--id", "hostdev0", "--bus", "rp1",
            "--profile", PROFILE]
    assert main(base) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("refused [aw-bits-exceeds-host]: vfio 0000:01:00.0: ")
    assert "nothing sent" in out
    assert main([*base, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["sent"] == [] and data["code"] == "aw-bits-exceeds-host"
    vm39 = start_vm("intel-iommu,aw-bits=39,caching-mode=on")
    assert main([*base[:2], vm39.sock, *base[3:], "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("accepted (dry run): 0000:01:00.0 fits")
    assert "hostdev0" not in peripheral(vm39.sock)


# --- bad sockets: one line, exit 2 ----------------------------------------------------------------


def _run_cli(capsys: pytest.CaptureFixture[str], sock: str, *extra: str) -> tuple[int, str]:
    rc = main(["hotplug", "--qmp", sock, "--host", BDF, "--profile", PROFILE, *extra])
    captured = capsys.readouterr()
    assert captured.out == ""
    return rc, captured.err


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="vq", dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _serve(path: Path, greeting: bytes | None) -> socket.socket:
    """A plain unix server: sends ``greeting`` and closes, or (None) accepts and says nothing."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    held: list[socket.socket] = []

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if greeting is None:
                held.append(conn)
            else:
                conn.sendall(greeting)
                conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return server


def test_missing_socket(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    rc, err = _run_cli(capsys, str(short_tmp / "absent.sock"))
    assert rc == 2
    assert err.count("\n") == 1 and "absent.sock: no such file" in err


def test_regular_file_is_not_a_socket(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = short_tmp / "file"
    path.write_text("{}")
    rc, err = _run_cli(capsys, str(path))
    assert rc == 2
    assert err.count("\n") == 1 and f"{path}: not a unix socket" in err


def test_nothing_listening(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = short_tmp / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the socket file stays, nobody listens
    rc, err = _run_cli(capsys, str(path))
    assert rc == 2
    assert err.count("\n") == 1 and "connection refused" in err


def test_socket_that_is_not_qmp(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = short_tmp / "hmp.sock"
    server = _serve(path, b"QEMU 10.0.2 monitor - type 'help' for more information\r\n(qemu) ")
    try:
        rc, err = _run_cli(capsys, str(path))
    finally:
        server.close()
    assert rc == 2
    assert err.count("\n") == 1 and "not a QMP socket" in err


def test_silent_socket_times_out(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = short_tmp / "silent.sock"
    server = _serve(path, None)
    try:
        start = time.monotonic()
        rc, err = _run_cli(capsys, str(path), "--timeout", "0.3")
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert rc == 2
    assert err.count("\n") == 1 and "no QMP greeting within 0.3 s" in err
    assert elapsed < 5


def test_library_error_carries_code(short_tmp: Path, inventory: Any) -> None:
    with pytest.raises(QmpError) as info:
        guarded_hotplug(short_tmp / "absent.sock", HotplugRequest(BDF), inventory)
    assert info.value.code == "qmp-unreachable"


# --- the decision with devices already plugged (no QEMU: a VMState as read) ----------------------


def _vm(*devices: PluggedDevice, props: str = "aw-bits=39,caching-mode=on") -> VMState:
    spec = DeviceSpec.parse(f"intel-iommu,{props}")
    return VMState(QemuVersion(10, 0, 2), "", "pc-q35-10.0", "/machine/peripheral-anon/device[0]", spec,
                   (PluggedDevice("/machine/peripheral/rp1", "pcie-root-port", "rp1"), *devices),
                   frozenset({"rp1"}), ())


def _vfio(id_: str, host: str) -> PluggedDevice:
    return PluggedDevice(f"/machine/peripheral/{id_}", "vfio-pci", id_, host=host, bus="rp1", devfn=0)


def test_host_already_attached_is_refused(inventory: Any) -> None:
    decision, _ = decide(_vm(_vfio("gpu", BDF)), HotplugRequest(BDF, id="hostdev0"), inventory)
    assert not decision.accepted and decision.code == "host-device-in-use"
    assert decision.message == f"vfio {BDF}: device is already attached"


def test_existing_vfio_devices_are_registered(inventory: Any) -> None:
    other = "0000:02:00.0"
    decision, notes = decide(_vm(_vfio("gpu", other)), HotplugRequest(BDF, id="hostdev0", bus="rp2"),
                             inventory)
    assert decision.accepted and notes == []
    absent = _vfio("nic", "0000:7f:00.0")
    decision, notes = decide(_vm(absent), HotplugRequest(BDF, id="hostdev0"), inventory)
    assert decision.accepted
    assert len(notes) == 1 and "0000:7f:00.0 is not in the host inventory" in notes[0]


def test_duplicate_id_of_existing_vfio_device(inventory: Any) -> None:
    decision, _ = decide(_vm(_vfio("gpu", "0000:02:00.0")), HotplugRequest(BDF, id="gpu"), inventory)
    assert decision.code == "device-exists" and decision.message == "Duplicate device ID 'gpu'"
    # QEMU 10.0 runs pc_hotplug_allowed (caching-mode) before qdev_set_id: that refusal wins.
    decision, _ = decide(_vm(_vfio("gpu", "0000:02:00.0"), props="aw-bits=39"),
                         HotplugRequest(BDF, id="gpu"), inventory)
    assert decision.code == "caching-mode-required"
