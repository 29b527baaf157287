"""Jetson power and load telemetry: tegrastats lines and the INA3221 power monitors in sysfs.

    sample = parse_tegrastats(line)        # TegraSample: ram, swap, cpu loads, gpu load, temps, rails (mW)
    rails = read_ina3221()                 # {"VDD_IN": Rail(volts, amps, watts), ...} from sysfs
    with PowerMeter() as meter:            # samples in the background (sysfs, else tegrastats)
        ...
    meter.watts, meter.joules              # average power and energy over the block

Rail names differ between modules and must never be assumed: Orin Nano and Orin NX report
VDD_IN (the module's input), VDD_CPU_GPU_CV and VDD_SOC; AGX Orin reports VDD_GPU_SOC,
VDD_CPU_CV, VIN_SYS_5V0 (and VDDQ_VDD2_1V8AO on a second monitor) and has no VDD_IN; older
modules print bare "GPU 463/463" pairs without units. The total is VDD_IN where it exists,
else the sum of every rail read (say which in `total_source`). Fields a line lacks are None.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

INA3221_GLOB = "sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*"
INPUT_RAILS = ("VDD_IN",)  # a module input rail: the total when present


@dataclass
class TegraSample:
    ram_mb: tuple[int, int] | None = None  # (used, total)
    swap_mb: tuple[int, int] | None = None
    cpu_load: list[int | None] = field(default_factory=list)  # percent per core; None for an offline core
    gpu_load: int | None = None  # GR3D_FREQ percent
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, int] = field(default_factory=dict)  # instantaneous power per rail

    @property
    def total_mw(self) -> int | None:
        for name in INPUT_RAILS:
            if name in self.rails_mw:
                return self.rails_mw[name]
        return sum(self.rails_mw.values()) if self.rails_mw else None


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL_MW = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW")  # L4T 35/36: NAME cur mW/avg mW
_RAIL_BARE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)/(\d+)(?=\s|$)")  # older L4T: NAME cur/avg (mW)
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "EMC_FREQ", "GR3D_FREQ"}


def parse_tegrastats(line: str) -> TegraSample:
    """One tegrastats line (with or without the leading date and time) as numbers."""
    sample = TegraSample()
    if m := _RAM.search(line):
        sample.ram_mb = (int(m.group(1)), int(m.group(2)))
    if m := _SWAP.search(line):
        sample.swap_mb = (int(m.group(1)), int(m.group(2)))
    if m := _CPU.search(line):
        for core in m.group(1).split(","):
            load = re.match(r"\s*(\d+)%", core)
            sample.cpu_load.append(int(load.group(1)) if load else None)  # "off" cores
    if m := _GPU.search(line):
        sample.gpu_load = int(m.group(1))
    sample.temps_c = {name.lower(): float(value) for name, value in _TEMP.findall(line)}
    rails = {name: int(cur) for name, cur, _avg in _RAIL_MW.findall(line)}
    if not rails:
        rails = {name: int(cur) for name, cur, _avg in _RAIL_BARE.findall(line) if name not in _NOT_RAILS}
    sample.rails_mw = rails
    return sample


# ---- the INA3221 monitors in sysfs -----------------------------------------------------------------
@dataclass
class Rail:
    volts: float | None
    amps: float | None

    @property
    def watts(self) -> float | None:
        return None if self.volts is None or self.amps is None else self.volts * self.amps


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def read_ina3221(root: str | Path = "/") -> dict[str, Rail]:
    """Every labelled channel of every INA3221 (inN_label, inN_input mV, currN_input mA)."""
    rails: dict[str, Rail] = {}
    for monitor in sorted(glob.glob(str(Path(root) / INA3221_GLOB))):
        for label in sorted(Path(monitor).glob("in*_label")):
            channel = label.name[2:-len("_label")]
            name = label.read_text().strip()
            if not name or name.lower().startswith("sum of"):  # in7 on L4T 36: not a rail
                continue
            mv, ma = _read_int(label.with_name(f"in{channel}_input")), _read_int(label.with_name(f"curr{channel}_input"))
            rails[name] = Rail(None if mv is None else mv / 1000, None if ma is None else ma / 1000)
    return rails


def total_watts(rails: dict[str, Rail]) -> tuple[float | None, str]:
    """(watts, what they are): VDD_IN where the module has it, else the sum of the rails read."""
    known = {name: rail.watts for name, rail in rails.items() if rail.watts is not None}
    for name in INPUT_RAILS:
        if name in known:
            return known[name], f"{name} (module input)"
    if not known:
        return None, "no rail readable"
    return sum(known.values()), "sum of " + "+".join(sorted(known)) + " (no module-input rail on this board)"


# ---- a background meter ----------------------------------------------------------------------------
class PowerMeter:
    """Samples power every `interval` seconds while open; `watts` (mean) and `joules` when closed.

    Reads the INA3221 monitors where sysfs has them, else runs `tegrastats --interval`; where
    neither exists `available` is False and the figures stay None.
    """

    def __init__(self, interval: float = 0.1, root: str | Path = "/"):
        self.interval, self.root = interval, Path(root)
        self.samples: list[tuple[float, float]] = []  # (time, watts)
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self.started = self.stopped = None

    @property
    def available(self) -> bool:
        return bool(read_ina3221(self.root)) or shutil.which("tegrastats") is not None

    def __enter__(self) -> "PowerMeter":
        self.started = time.monotonic()
        if read_ina3221(self.root):
            self.source = "ina3221"
            self._thread = threading.Thread(target=self._sysfs, daemon=True, name="vlm-edge-power")
            self._thread.start()
        elif shutil.which("tegrastats"):
            self.source = "tegrastats"
            self._process = subprocess.Popen(["tegrastats", "--interval", str(max(1, int(self.interval * 1000)))],
                                             stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._tegrastats, daemon=True, name="vlm-edge-power")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped = time.monotonic()
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sysfs(self) -> None:
        while not self._stop.is_set():
            watts, _ = total_watts(read_ina3221(self.root))
            if watts is not None:
                self.samples.append((time.monotonic(), watts))
            self._stop.wait(self.interval)

    def _tegrastats(self) -> None:
        for line in self._process.stdout:
            total = parse_tegrastats(line).total_mw
            if total is not None:
                self.samples.append((time.monotonic(), total / 1000))
            if self._stop.is_set():
                return

    @property
    def watts(self) -> float | None:
        return sum(w for _, w in self.samples) / len(self.samples) if self.samples else None

    @property
    def joules(self) -> float | None:
        if self.watts is None or self.started is None or self.stopped is None:
            return None
        return self.watts * (self.stopped - self.started)
