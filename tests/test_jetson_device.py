"""Jetson probes and telemetry, replaying recorded real samples (tests/data/jetson/SOURCES.md says
which module each is from): tegrastats lines of three generations with different rail names and
formats, /etc and /proc trees of two Orin Nanos, an AGX Orin's INA3221 sysfs channels."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm_edge.jetson.device import DeviceInfo, engine_fit, jetpack_for, parse_l4t, parse_nvpmodel, probe
from vlm_edge.jetson.telemetry import PowerMeter, parse_tegrastats, read_ina3221, total_watts

DATA = Path(__file__).parent / "data" / "jetson"
JETSON = [sys.executable, "-c", "import sys; from vlm_edge.jetson.cli import jetson_main; sys.exit(jetson_main())"]


def _line(name: str) -> str:
    return (DATA / "tegrastats" / name).read_text().splitlines()[0]


def test_tegrastats_orin_nano_module_input_rail():
    s = parse_tegrastats(_line("orin-nano.txt"))
    assert s.ram_mb == (2272, 7620) and s.swap_mb == (221, 3810) and s.gpu_load == 0
    assert s.temps_c == {"cpu": 54.9, "gpu": 55.5, "tj": 56.7}
    assert s.rails_mw == {"VDD_IN": 4673, "VDD_CPU_GPU_CV": 527, "VDD_SOC": 1339}
    assert s.total_mw == 4673  # VDD_IN is the module's input: not the sum
    assert s.cpu_load[0] == 0 and s.cpu_load[1] is None  # the recorded line elides the other cores


def test_tegrastats_agx_xavier_bare_rails_are_summed():
    s = parse_tegrastats(_line("agx-xavier.txt"))
    assert s.rails_mw == {"GPU": 463, "CPU": 618, "SOC": 2936, "CV": 0, "VDDRQ": 309, "SYS5V": 3306}
    assert s.total_mw == 463 + 618 + 2936 + 0 + 309 + 3306
    assert s.cpu_load == [0] * 8 and s.ram_mb == (14700, 15692) and s.temps_c["pmic"] == 100.0


def test_tegrastats_old_format_keeps_what_it_can():
    for line in (DATA / "tegrastats" / "tx1.txt").read_text().splitlines():
        s = parse_tegrastats(line)
        assert s.ram_mb[1] == 3983 and s.gpu_load is None and s.rails_mw == {} and s.total_mw is None


def test_ina3221_channels_of_an_agx_orin():
    rails = read_ina3221(DATA / "trees" / "agx-orin")
    assert set(rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}  # no "sum of shunts"
    assert rails["VDD_GPU_SOC"].watts == pytest.approx(3.575, abs=0.001)  # = the 3575 mW tegrastats printed
    assert rails["VDD_CPU_CV"].watts is None  # recorded without a value
    watts, source = total_watts(rails)
    assert watts == pytest.approx(3.575, abs=0.001) and "no module-input rail" in source
    assert read_ina3221(DATA / "trees" / "orin-nano-super-devkit") == {}


def test_power_meter_averages_the_rails_over_the_block():
    with PowerMeter(interval=0.01, root=DATA / "trees" / "agx-orin") as meter:
        time.sleep(0.2)
    assert meter.source == "ina3221" and len(meter.samples) >= 5
    assert meter.watts == pytest.approx(3.575, abs=0.001) and meter.joules == pytest.approx(3.575 * 0.2, rel=0.3)


def test_probe_reads_recorded_orin_nanos():
    super_kit = probe(DATA / "trees" / "orin-nano-super-devkit", commands=False)
    assert super_kit.model == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert (super_kit.l4t, super_kit.jetpack, super_kit.sm) == ("R36.4.7", "6.x", "87")
    assert (super_kit.memory_total_mb, super_kit.memory_available_mb) == (7620, 4795)
    recomputer = probe(DATA / "trees" / "orin-nano-8gb-recomputer", commands=False)
    assert recomputer.model is None and recomputer.l4t == "R36.4.3"
    assert recomputer.jetpack == "6.2.1"  # the nvidia-jetpack package over the L4T table's "6.2"
    assert recomputer.power_mode == "25W (mode 1)" and recomputer.memory_total_mb is None


def test_release_strings():
    assert parse_l4t("# R35 (release), REVISION: 4.1, GCID: 33958178") == "R35.4.1"
    assert parse_l4t("Ubuntu 22.04") is None
    assert [jetpack_for(v) for v in ("R36.4.3", "R36.4.0", "R36.9.1", "R35.4.1", None)] == \
        ["6.2", "6.1", "6.x", "5.1.2", None]
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (mode 0)" and parse_nvpmodel("") is None


def test_engine_fit_says_what_to_rebuild(micro_engine, tmp_path):
    import shutil

    from vlm_edge.common.manifest import Manifest

    engine = tmp_path / "engine"
    shutil.copytree(micro_engine / "engine", engine)
    orin = DeviceInfo(model="NVIDIA Jetson AGX Orin", l4t="R36.4.3", tensorrt="10.3.0", memory_available_mb=4000,
                      sm="87")
    lines = engine_fit(engine, orin)
    assert "fits in 4000 MB" in lines[0] and "no TensorRT plans" in lines[1]
    manifest = Manifest.read(engine)
    manifest.targets = [{"component": "vision", "file": "engines/x/vision.plan", "tensorrt": "10.7.0", "sm": "87",
                         "l4t": "36.4.3", "precision": "fp16", "cache_key": "trt10.7.0-sm87-l4t36.4.3-fp16"}]
    manifest.write(engine)
    (line,) = [line for line in engine_fit(engine, orin) if line.startswith("plan")]
    assert "built with TensorRT 10.7.0, this device has 10.3.0" in line and "rebuild" in line


def test_vlm_jetson_info_on_a_recorded_tree():
    root = DATA / "trees" / "orin-nano-super-devkit"
    out = subprocess.run([*JETSON, "info", "--root", str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Orin Nano Engineering Reference Developer Kit Super" in out.stdout and "R36.4.7" in out.stdout
    js = subprocess.run([*JETSON, "info", "--root", str(DATA / "trees" / "agx-orin"), "--json", "--power"],
                        capture_output=True, text=True)
    facts = json.loads(js.stdout)
    assert facts["model"] is None and facts["total_w"] == pytest.approx(3.575, abs=0.001)


def test_vlm_bench_power_without_telemetry_says_so(micro_engine, capsys):
    from vlm_edge.jetson.cli import bench_main

    assert bench_main([str(micro_engine / "engine"), "--power", "--runs", "1", "--warmup", "0",
                       "--new-tokens", "4"]) == 0
    assert "power: no telemetry on this machine" in capsys.readouterr().out
