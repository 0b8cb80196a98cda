"""gpu_check.py runs end to end on CPU at tiny widths, so the GPU's first run is not its debugging:
the demo stages, every memory run and the rollout each leave their line in the table.
Run: python -m pytest -q test_gpu_check.py"""

import re

import bench_memory
import gpu_check


def test_gpu_check_small_on_cpu(demo_assets, monkeypatch):
    monkeypatch.setattr(gpu_check, "device", "cpu")
    monkeypatch.setattr(gpu_check, "small", True)
    monkeypatch.setattr(gpu_check, "demo_steps", 1)
    monkeypatch.setattr(gpu_check, "rollout_tokens", 4)
    monkeypatch.setattr(gpu_check, "runs", "update:1:64,update:4:64,update:1:none:768")
    for name in ("QWEN25_VL_7B", "frames", "vision_depth", "device"):  # main shrinks them
        monkeypatch.setattr(bench_memory, name, getattr(bench_memory, name))
    monkeypatch.setattr(bench_memory, "QWEN25_VL_7B", dict(bench_memory.QWEN25_VL_7B))
    table = gpu_check.main()
    assert re.fullmatch(r"demo: 1 SFT steps \d+ s, 1 T-GRPO steps \d+ s", table[0])
    nets = {}
    for line in table:
        m = re.match(r"\| (update:\S+) \| ([\d.]+) \| - \| - \| [\d.]+ \|", line)
        if m:
            nets[m[1]] = float(m[2])
    assert nets.keys() == {"update:1:64", "update:4:64", "update:1:none:768"}
    # the values: not here (in-process CPU RSS reuses freed memory; the GPU reads its allocator)
    assert re.fullmatch(r"rollout at real widths: \d+ tokens/s .*", table[-1])
