"""memory.py's arithmetic against numbers worked out by hand. Run: python -m pytest -q test_memory.py"""

import pytest

import memory


@pytest.mark.parametrize("strategy, phase, n, expected", [
    # P = 8 parameters on 8 GPUs, + 2P = 16 bytes for the bf16 reference
    ("ddp", "update", 8, 4 * 8 + 4 * 8 + 4 * 8 + 8 * 8 + 2 * 8 + 16),   # 192
    ("ddp", "update", 1, 4 * 8 + 4 * 8 + 8 * 8 + 2 * 8 + 16),           # no bucket copy: 160
    ("ddp", "rollout", 8, 4 * 8 + 8 * 8 + 2 * 8 + 16),                  # no grads: 128
    ("zero2", "update", 8, 2 * 8 + 2 + 4 + 8 + 4 + 16),                 # 50: 6.25 bytes a parameter
    ("zero2", "rollout", 8, 2 * 8 + 4 + 8 + 16),                        # 44
    ("zero3", "update", 8, 2 + 4 + 8 + 2 + 4 + 16),                     # 36
    ("zero3", "rollout", 8, 2 + 4 + 8 + 2 * 8 + 16),                    # 46: full bf16 gathered
    ("fsdp", "update", 8, 4 + 8 + 4 + 2 * 2 + 16),                      # root of 2 gathered in bf16
    ("fsdp", "rollout", 8, 4 + 8 + 4 * 8 + 2 * 8 + 16),                 # fp32 summoned + bf16 copy
])
def test_static_bytes_by_hand(strategy, phase, n, expected):
    assert memory.static_bytes(strategy, P=8, n=n, root=2, phase=phase) == expected


def test_static_bytes_lora_and_no_reference():
    # base 2 x 8 = 16; adapters A = 1: weights 4, Adam 8, bf16 copy 2, grads 4, DDP buckets 4
    assert memory.static_bytes("lora", P=8, n=8, A=1) == 16 + 4 + 8 + 2 + 4 + 4
    assert memory.static_bytes("lora", P=8, n=1, A=1) == 16 + 4 + 8 + 2 + 4
    assert memory.static_bytes("zero2", P=8, n=8, reference=False) == 34  # SFT: no reference
    with pytest.raises(ValueError):
        memory.static_bytes("zero4", P=8)


def fake_results(a0, c_head, a1, b1, prompt=100, G=2):
    """bench_memory.json rows whose net follows the model exactly (base 1000)."""
    out = []
    for run, layers, chunk, T in [("update:1:128", 1, 128, 600), ("update:2:128", 2, 128, 600),
                                  ("update:4:128", 4, 128, 600), ("update:1:64", 1, 64, 600),
                                  ("update:1:64:48", 1, 64, 300)]:
        n, N = prompt + G * T, G * T
        net = a0 + c_head * min(chunk, N) + (a1 + layers * b1) * n
        out.append(dict(run=run, part="update", layers=layers, chunk=chunk, T=T, G=G,
                        prompt_len=prompt, base=1000, peak=1000 + net, end_rss=1000 + 50 * layers))
    return out


def test_fit_recovers_the_parts_and_predicts_four_layers():
    results = fake_results(a0=5e3, c_head=3.0, a1=7.0, b1=11.0)
    f = memory.fit(results, above="base")
    for k, v in dict(a0=5e3, c_head=3.0, a1=7.0, b1=11.0).items():
        assert f[k] == pytest.approx(v, rel=1e-9)
    # over the gradients (50 bytes a layer): the per-layer part loses 50 / n = 50 / 1300
    assert memory.fit(results)["b1"] == pytest.approx(11.0 - 50 / 1300, rel=1e-9)
    c = memory.check(results)
    # 4 layers, n = 100 + 1200: 5000 + 3 * 128 + (7 + 44) * 1300 = 71684
    assert c["net"][1] == 71684 and c["net"][0] == pytest.approx(71684)
    assert c["transient"][1] == 71684 - 200 and c["transient"][0] == pytest.approx(71684 - 200)
    # chunk 1024, without checkpointing: + 3 * (1024 - 128), and each layer keeps (6 D + 4 I) bf16
    # values a token: D = 1, I = 2 -> 28 bytes
    assert memory.activation_bytes(f, 4, 1300, 1200, c=1024, checkpointing=False, D=1, I=2) == \
        pytest.approx(71684 + 3 * 896 + 4 * 1300 * 28)


def test_qwen25_vl_7b_parameter_counts():
    """8,292,166,656 parameters (the released checkpoint's 8.29B); LoRA rank 64 on the language
    model's 7 projections: 64 x 28 x (in + out summed over q, k, v, o, gate, up, down)."""
    counts = memory.param_counts(memory.qwen25_vl_7b())
    assert counts["total"] == 8_292_166_656
    D, I, kv = 3584, 18944, 512
    assert counts["lora"] == 64 * 28 * ((D + D) + 2 * (D + kv) + (D + D) + 3 * (D + I))
    # root: embeddings and head 2 x 152064 x 3584, final norm, vision patch embedding and merger
    assert counts["root"] == 2 * 152064 * D + D + 1280 * 3 * 2 * 14 * 14 + (
        1280 + 5120 * 5120 + 5120 + 5120 * D + D)
