"""memory.py's arithmetic against numbers worked out by hand.
Run: python -m pytest -q test_memory.py"""

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
    ("fsdp", "rollout", 8, 4 + 8 + 4 * 8 + 16),                         # fp32 summoned
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


def fake_results(four_layers=False):
    """bench_memory.json rows built from known parts (V = 10, D = 3): spike 50, 2 bytes a token a
    layer, head 300 + chunk (128, 256: the larger counts), 100 bytes of gradients a layer,
    n = 100 + 2 x 600."""
    update = lambda run, L: dict(run=run, part="update", layers=L, chunk=128, T=600, G=2,
                                 prompt_len=100, base=1000, grads_bytes=300 + 100 * L,
                                 end_rss=1000 + 300 + 100 * L, peak=1000 + 300 + 100 * L + 50 +
                                 2 * 1300 * (L - 1))
    head = lambda run, c, T: dict(run=run, part="head", layers=0, chunk=c, T=T, G=2, prompt_len=0,
                                  base=1000, peak=1000 + 10 * 3 * 4 + 2 * T * 3 * 4 + 300 + c)
    out = [update("update:1:128", 1), update("update:2:128", 2), head("head:0:128", 128, 4),
           head("head:0:256:192", 256, 8)]
    return out + [update("update:4:128", 4)] * four_layers


def test_fit_recovers_the_parts():
    f = memory.fit(fake_results(), V=10, D=3)
    expected = dict(spike=50, per_token=2, head=300 + 256)
    for k, v in expected.items():
        assert f[k] == pytest.approx(v, rel=1e-9), k
    # net = peak - base: 450 at 1 layer, 450 + 100 + 2 x 1300 = 3150 at 2 -> (-2250, 2700)
    assert f["net"] == (-2250, 2700)
    assert memory.check(fake_results()) == {}  # no 4-layer run: nothing to check
    # 4 layers: net 300 + 400 + 50 + 2 x 1300 x 3 = 8550 = -2250 + 4 x 2700
    assert memory.check(fake_results(four_layers=True))["net"] == (8550, 8550)


def test_activation_and_rollout_bytes_by_hand():
    f = dict(spike=50, per_token=2, head=300)
    # 28 layers, n = 7244, N = 6144, chunk 1024, V = 10:
    # 50 + 300 + 3 x 1024 x 10 x 4 + 28 x 2 x 7244
    assert memory.activation_bytes(f, 28, 7244, 6144, V=10) == 50 + 300 + 122880 + 405664
    assert memory.activation_bytes(f, 28, 7244, 512, V=10) == 50 + 300 + 61440 + 405664  # N < chunk
    # without checkpointing each layer keeps (6 D + 4 I) bf16 values a token: D = 1, I = 2 -> 28
    assert memory.activation_bytes(f, 1, 10, 8, checkpointing=False, D=1, I=2, V=10) == \
        50 + 300 + 3 * 8 * 40 + 20 + 10 * 28
    # cache 2 rows x 15 tokens x 1 layer x (k, v) x 1 x 4 bytes = 240; prefill 2 x 10 x 8 x 4 = 640;
    # logits 2 x 3 x 4 = 24
    assert memory.rollout_bytes(layers=1, prompt=10, rows=2, new=5, D=1, I=2, V=3, kv=1) == 904


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
