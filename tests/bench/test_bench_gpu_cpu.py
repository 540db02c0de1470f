"""bench/bench_gpu.py in its CPU smoke mode: the engine's own path end to end, a table printed, and the
synthetic pixels removed from the cache folder afterwards."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cpu_smoke_prints_the_table_and_cleans_up(tmp_path, capsys):
    bench = _bench()
    results = Path(bench.__file__).parent / "RESULTS.md"
    before = results.read_text() if results.is_file() else None
    cache = tmp_path / "cache"
    rc = bench.main(["--device", "cpu", "--archs", "tinyclip-S", "--n", "256", "--batch-sizes", "64",
                     "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("| tinyclip-S | 64* | 256 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) > 0  # images/s
    assert "(extrap.)" in cells[4]  # 256 images, extrapolated to a 50k pass, and labelled so
    assert "| tinyclip-S | clip | 32 |" in out
    assert list(cache.iterdir()) == []  # the private synthetic-pixels folder is gone
    assert (results.read_text() if results.is_file() else None) == before  # no --record, no write


def test_gpu_peaks_by_name():
    bench = _bench()
    assert bench.gpu_peak("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert bench.gpu_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert bench.gpu_peak("NVIDIA H200")[0] == 989.0
    assert bench.gpu_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert bench.gpu_peak("NVIDIA L40S")[0] == 362.0
    peak, why = bench.gpu_peak("Some Future GPU")
    assert peak == bench.REFERENCE_PEAK and "not in the peak table" in why
