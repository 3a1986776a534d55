"""``viommu simulate FILE [--json]``: run a scenario's lifecycle and print the trace.

Each event, accepted or refused, with the reason code and QEMU's message,
and the guest-visible state whenever it changes. Exit 0 when everything was
accepted, 1 when a device, machine-done, migration or host mapping was
refused, 2 for a bad scenario (file, line and key named).
"""

from __future__ import annotations

import sys
from typing import Any

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from viommu.argspec import Args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a scenario (vIOMMU, policy, hosts, devices, events) and print the trace",
        description="Run a TOML scenario through the machine lifecycle (realize, cold plug, "
        "machine-done, then its events: hotplug, unplug, reset, dma-map, dma-unmap, migrate) under "
        "its policy, and print every decision with its reason code and QEMU's message.",
    )
    parser.add_argument("file", metavar="FILE", help="a scenario TOML (see examples/)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def _state_text(state: dict[str, Any]) -> str:
    parts = []
    for key, value in state.items():
        if key == "model":
            continue
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
        elif isinstance(value, list):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def human(sim: Any, colour: bool) -> str:
    from viommu import render

    s = sim.scenario
    out = [
        render.paint(f"scenario {s.path}", "bold", colour),
        f"  vIOMMU    {s.vm.viommu}",
        f"  policy    {s.policy.value}, QEMU {s.version}",
    ]
    if str(sim.machine.spec) != str(s.vm.viommu):
        out.append(f"  effective {sim.machine.spec}")
    rows: list[list[str]] = []
    styles: list[str | None] = []
    last_state: dict[str, Any] | None = None
    notes: list[str] = []
    for i, d in enumerate(sim.trace):
        verdict = "ok" if d.accepted else "refused"
        text = d.message or ""
        if d.detail.get("narrowed"):
            text = "narrowed " + ", ".join(f"{k}={v}" for k, v in d.detail["narrowed"].items())
        if d.event == "dma-map" and not text:
            text = f"{d.detail['iova']}+{d.detail['size']} mapped on the host"
        rows.append([str(i), d.event, d.target or "", verdict, d.code or "", text])
        styles.append(None if d.accepted else ("yellow" if d.code == "guest-map-illegal" else "red"))
        state = dict(d.state)
        if state != last_state:
            notes.append(f"  after #{i} {d.event}: {_state_text(state)}")
            last_state = state
    out += ["", render.table(["#", "event", "target", "verdict", "code", "message"], rows,
                             styles=styles, colour=colour)]
    if sim.not_run:
        out.append(render.paint("  QEMU exited at start-up: the remaining events did not run", "red", colour))
        out += [f"    not run: {e.do} ({e.where})" for e in sim.not_run]
    out += ["", "guest-visible state", *notes]
    return "\n".join(out)


def run(args: Args) -> int:
    from viommu import render
    from viommu.scenario import load_scenario, simulate

    sim = simulate(load_scenario(args.file))
    if args.json:
        render.dump_json(sim.to_json())
    else:
        sys.stdout.write(human(sim, render.use_colour(sys.stdout)) + "\n")
    return 1 if sim.refused or not sim.started else 0
