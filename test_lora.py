"""LoRA through PEFT: the adapted model is what trains, samples and is saved; the adapters switched off
are the reference; adapter checkpoints load (merged) in the next stage and in eval.py. Oracles: the
merged model (W + alpha/r * B @ A, by hand), a separately loaded base model, Hugging Face from_pretrained."""
import json
import os
import runpy
import shutil
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2_5_VLForConditionalGeneration

import data
from common import list_checkpoints, resolve_model_path
from conftest import ROOT, read_metrics, run_script
from model import VisionOnceLM, add_lora, generate, load_model, token_logprobs

PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def lora_model(path, seed, target=("language",), rank=4, alpha=8):
    """A PeftModel on `path` whose B matrices are random (they start at 0, where adapters change nothing)."""
    hf, tokenizer = load_model(path)
    torch.manual_seed(seed)  # peft draws A from the global generator: the same adapters whatever ran before
    peft_model = add_lora(hf, rank, alpha, target=target)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    return peft_model, tokenizer


def demo_batch(world, tokenizer):
    """A video and an image prompt of the demo world, at the demo's frame size."""
    rows = data.load_rows(os.path.join(world, "rl.json"))
    rows = [next(r for r in rows if r["data_type"] == kind) for kind in ("video", "image")]
    visuals = [data.make_visual(*data.load_frames(r, 8, 2.0, *[112 * 112] * 4)) for r in rows]
    return data.collate([data.prompt_text(r) for r in rows], visuals, tokenizer)


def lora_modules(model):
    return sorted(n[:-len(".lora_A")].replace("base_model.model.", "", 1)
                  for n, _ in model.named_modules() if n.endswith(".lora_A"))


def test_add_lora_adapts_the_targets_and_freezes_the_rest(demo_assets):
    _, tiny = demo_assets
    hf, _ = load_model(tiny)
    layers = hf.config.text_config.num_hidden_layers
    model = add_lora(hf, rank=4, alpha=8)
    assert lora_modules(model) == sorted(f"model.language_model.layers.{i}.{p}" for i in range(layers)
                                         for p in PROJECTIONS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert len(trainable) == 2 * layers * len(PROJECTIONS)
    # with the vision tower: its attention and MLP projections and the merger too
    hf, _ = load_model(tiny)
    both = lora_modules(add_lora(hf, rank=4, alpha=8, target=["language", "vision"]))
    vision = [n for n in both if ".visual." in n]
    depth = hf.config.vision_config.depth
    assert len(both) == layers * len(PROJECTIONS) + len(vision)
    assert sorted(vision) == sorted([f"model.visual.blocks.{i}.{p}" for i in range(depth)
                                     for p in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj",
                                               "mlp.down_proj")] + ["model.visual.merger.mlp.0",
                                                                     "model.visual.merger.mlp.2"])
    with pytest.raises(ValueError, match="lora_target"):
        add_lora(load_model(tiny)[0], rank=4, alpha=8, target=["langauge"])


def test_vision_once_and_generate_see_the_adapted_weights(demo_assets, tmp_path):
    world, tiny = demo_assets
    model, tokenizer = lora_model(tiny, seed=0)
    model.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "a")
    merged, _ = load_model(tmp_path / "a")  # base + adapters merged into plain Linear weights
    # the merge itself, by hand on one layer: W + alpha / r * B @ A
    base, _ = load_model(tiny)
    name = "model.language_model.layers.1.mlp.down_proj"
    layer = model.get_base_model().get_submodule(name)
    expected = base.get_submodule(name).weight + 8 / 4 * layer.lora_B.default.weight @ layer.lora_A.default.weight
    assert torch.allclose(merged.get_submodule(name).weight, expected, atol=1e-6)

    batch = demo_batch(world, tokenizer)
    greedy = generate(model, batch, 1, 24, temperature=0.0)["completion_ids"]  # [2, 24]
    assert torch.equal(greedy, generate(merged, batch, 1, 24, temperature=0.0)["completion_ids"])
    assert not torch.equal(greedy, generate(base, batch, 1, 24, temperature=0.0)["completion_ids"])

    out = generate(model, batch, 3, 24, generator=torch.Generator().manual_seed(0))
    args = (batch, out["prompt_index"], out["completion_ids"], out["lengths"])
    with torch.no_grad():
        adapted = token_logprobs(VisionOnceLM(model), *args)  # as the trainers call it
        assert torch.equal(adapted, token_logprobs(model, *args))  # a PeftModel passed as it is
        assert torch.allclose(adapted, token_logprobs(merged, *args), atol=1e-5)
        assert (adapted - token_logprobs(base, *args)).abs().max() > 0.1  # the adapters matter here


def test_reference_is_the_base_with_adapters_disabled(demo_assets):
    world, tiny = demo_assets
    model, tokenizer = lora_model(tiny, seed=1)
    policy = VisionOnceLM(model)
    batch = demo_batch(world, tokenizer)
    out = generate(model, batch, 4, 24, generator=torch.Generator().manual_seed(1))
    args = (batch, out["prompt_index"], out["completion_ids"], out["lengths"])
    separate, _ = load_model(tiny)  # what the full fine-tuning path loads as its reference
    with torch.no_grad():
        with model.disable_adapter():  # what tgrpo.py does with LoRA
            ref = token_logprobs(policy, *args)
        oracle = token_logprobs(separate, *args)
        adapted = token_logprobs(policy, *args)  # and the adapters are back on afterwards
    assert (ref - oracle).abs().max() < 1e-5
    assert (adapted - oracle).abs().max() > 0.1


def test_adapter_checkpoints_chain_load_merged_and_merge_command(demo_assets, tmp_path, monkeypatch):
    # stage 1 (say SFT) adapters on the base; stage 2 (say T-GRPO) adapters on the merged stage 1
    world, tiny = demo_assets
    first, tokenizer = lora_model(tiny, seed=2)
    first.save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    assert resolve_model_path(str(tmp_path / "sft")) == str(tmp_path / "sft")
    second, _ = lora_model(tmp_path / "sft", seed=3)
    second.save_pretrained(tmp_path / "rl")
    tokenizer.save_pretrained(tmp_path / "rl")
    with open(tmp_path / "rl" / "adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == str(tmp_path / "sft")  # not the plain base

    chained, _ = load_model(tmp_path / "rl")
    base, _ = load_model(tiny)
    name = "model.language_model.layers.0.self_attn.v_proj"
    delta = lambda m: 2.0 * m.get_submodule(name).lora_B.default.weight @ m.get_submodule(name).lora_A.default.weight
    expected = base.get_submodule(name).weight + delta(first.get_base_model()) + delta(second.get_base_model())
    assert torch.allclose(chained.get_submodule(name).weight, expected, atol=1e-5)
    untouched = "model.visual.blocks.0.attn.qkv.weight"
    assert torch.equal(chained.state_dict()[untouched], base.state_dict()[untouched])

    # python model.py merge: a plain Hugging Face checkpoint with the same weights
    monkeypatch.setattr(sys, "argv", ["model.py", "merge", str(tmp_path / "rl"), str(tmp_path / "merged")])
    runpy.run_path(os.path.join(ROOT, "model.py"), run_name="__main__")
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged").state_dict()
    assert plain.keys() == chained.state_dict().keys()
    assert all(torch.equal(plain[k], v) for k, v in chained.state_dict().items())

    shutil.move(tmp_path / "sft", tmp_path / "moved")  # the chain names its base by path: say so when it is gone
    with pytest.raises(FileNotFoundError, match="model.py merge"):
        load_model(tmp_path / "rl")


LORA_RL = ["--max_new_tokens=64", "--G=4", "--G_shuffled=2", "--prompts_per_rank=3", "--micro_batch_size=4",
           "--lora_rank=8", "--lora_alpha=16", "--lr=1e-2"]


def adapters(ckpt):
    with safe_open(os.path.join(ckpt, "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.slow
def test_lora_tgrpo_trains_saves_adapters_resumes_exactly_and_evaluates(sft_run, tmp_path):
    # one update per step, so that step 1's KL is taken before the adapters have moved
    args = [f"--model_path={sft_run}", "--max_steps=3", "--save_every=1", "--keep_last=5", "--num_iterations=1",
            *LORA_RL]
    run_script("tgrpo.py", f"--out_dir={tmp_path}/a", *args)
    m = read_metrics(f"{tmp_path}/a")
    assert [x["step"] for x in m] == [1, 2, 3]
    assert any(x["grad_norm"] > 0 for x in m)
    # B starts at 0: the policy starts at the reference; once trained, the reference (adapters off) stays behind
    assert m[0]["kl"] == 0.0 and m[-1]["kl"] > 0.0
    assert len({x["weight_checksums"][0] for x in m}) == 3

    ckpt = f"{tmp_path}/a/step_000003"
    assert not os.path.exists(f"{ckpt}/model.safetensors")  # adapters only, naming their base
    with open(f"{ckpt}/adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == list_checkpoints(sft_run)[-1]
    with open(f"{ckpt}/trainer.json") as f:
        assert json.load(f)["config"]["lora_rank"] == 8  # the resolved config
    with safe_open(f"{ckpt}/state/model.safetensors", "pt") as f:  # resume state: no frozen base either
        assert set(f.keys()) == {"hf." + k.replace(".weight", ".default.weight")
                                 for k in adapters(ckpt)}

    run_script("tgrpo.py", f"--out_dir={tmp_path}/b", f"--resume={tmp_path}/a/step_000002", *args)
    b = read_metrics(f"{tmp_path}/b")
    assert [x["step"] for x in b] == [3]
    for key in ("problem_ids", "loss", "reward", "kl", "completion_len", "weight_checksums"):
        assert m[-1][key] == b[0][key], key
    wa, wb = adapters(ckpt), adapters(f"{tmp_path}/b/step_000003")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], v) for k, v in adapters(f"{tmp_path}/a/step_000002").items())

    # eval.py takes the training out_dir as it is (newest checkpoint, merged on load)
    run_script("eval.py", f"--model_path={tmp_path}/a", f"--out_dir={tmp_path}/eval", "--limit=4",
               "--max_new_tokens=16")
    with open(f"{tmp_path}/eval/summary.json") as f:
        summary = json.load(f)
    assert summary["model"] == ckpt and summary["summary"]["demo"]["all"]["n"] == 4


@pytest.mark.slow
def test_lora_tgrpo_two_processes_keep_identical_weights(sft_run, tmp_path):
    out = f"{tmp_path}/ddp"
    run_script("tgrpo.py", f"--model_path={sft_run}", f"--out_dir={out}", "--max_steps=3", *LORA_RL, processes=2)
    m = read_metrics(out)
    assert len(m) == 3
    for x in m:
        r0, r1 = x["problem_ids"]
        assert set(r0).isdisjoint(r1)
        assert x["weight_checksums"][0] == x["weight_checksums"][1]
    assert len({c for x in m for c in x["weight_checksums"]}) == 3  # the adapters did move


@pytest.mark.slow
def test_lora_sft_resumes_exactly_and_feeds_lora_tgrpo(demo_assets, tmp_path):
    common = ["sft.py", f"--model_path={demo_assets[1]}", "--max_steps=6", "--batch_size=32", "--eval_every=0",
              "--n_samples=2",
              "--sample_tokens=16", "--save_every=2", "--keep_last=5", "--lora_rank=8", "--lora_alpha=16"]
    run_script(*common, f"--out_dir={tmp_path}/a")
    run_script(*common, f"--out_dir={tmp_path}/b", f"--resume={tmp_path}/a/step_000002")
    a, b = read_metrics(f"{tmp_path}/a"), read_metrics(f"{tmp_path}/b")
    for x, y in zip([x for x in a if "loss" in x][2:], [y for y in b if "loss" in y]):
        assert x["step"] == y["step"] and x["loss"] == y["loss"]
    wa, wb = adapters(f"{tmp_path}/a/step_000006"), adapters(f"{tmp_path}/b/step_000006")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # the next stage starts from the SFT adapters merged into the base; that merged model is its reference
    run_script("tgrpo.py", f"--model_path={tmp_path}/a", f"--out_dir={tmp_path}/rl", "--max_steps=1",
               *LORA_RL)
    assert read_metrics(f"{tmp_path}/rl")[0]["kl"] == 0.0
    with open(f"{tmp_path}/rl/step_000001/adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == f"{tmp_path}/a/step_000006"
