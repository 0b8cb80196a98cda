"""Qwen3.5 against Hugging Face's own code, on a tiny random Qwen3.5 with the real hybrid layout
(3 Gated DeltaNet layers + 1 full attention): loading, token ids and template from the checkpoint,
M-RoPE positions (get_rope_index), left padding through the linear layers, sampling (generate,
prompt states copied into rows, finished rows leaving), prompt-once log-probs and gradients (with
and without gradient checkpointing, under DDP), the thinking template.
Run: python -m pytest -q test_qwen3_5.py   (`python test_qwen3_5.py CKPT OUT`: a DDP rank)"""
import contextlib
import copy
import re
import sys

import pytest
import torch
from transformers import AutoTokenizer
from transformers.models.qwen3_5 import modeling_qwen3_5

import data
import linear_state
from demo import make_tiny_checkpoint
from families import QWEN3_5
from model import (VisionOnceLM, completion_texts, embed_prompts, generate, load_model,
                   micro_batches, rope_positions, stop_token_ids, token_logprobs)
from conftest import run_script
from test_model import (TEXTS, assert_grads_equal, ddp_rows, frames, grads_of,
                        hf_completion_logprobs, hf_inputs, random_completions, row, text_prompt)


@pytest.fixture(scope="module")
def ckpt35(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3.5")
    make_tiny_checkpoint(path, TEXTS, model_type="qwen3_5")
    return path


@pytest.fixture(scope="module")
def loaded35(ckpt35):
    return load_model(ckpt35)


def exact_delta_rule(query, key, value, g, beta, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=True, **kwargs):
    """The gated delta rule token by token in float64 (HF's torch_recurrent_gated_delta_rule without
    its float32 cast): S <- exp(g) S; S += k beta (v - S^T k)^T; o = S^T q; q, k l2-normalised."""
    B, L, Hk, dk = key.shape
    Hv, dv = value.shape[-2:]
    q, k = query.repeat_interleave(Hv // Hk, 2), key.repeat_interleave(Hv // Hk, 2)
    q, k, v, beta, g = [x.transpose(1, 2).double() for x in (q, k, value, beta, g)]  # [B, H, L..]
    q, k = modeling_qwen3_5.l2norm(q) / dk ** 0.5, modeling_qwen3_5.l2norm(k)
    S = torch.zeros(B, Hv, dk, dv, dtype=torch.float64)  # [B, H, dk, dv]
    S = S if initial_state is None else initial_state.double()
    out = []
    for t in range(L):
        S = S * g[:, :, t].exp()[..., None, None]
        delta = (v[:, :, t] - (S * k[:, :, t, :, None]).sum(-2)) * beta[:, :, t, None]  # [B, H, dv]
        S = S + k[:, :, t, :, None] * delta[:, :, None, :]
        out.append((S * q[:, :, t, :, None]).sum(-2))
    return torch.stack(out, 2).transpose(1, 2).to(query.dtype), (S if output_final_state else None)


@pytest.fixture
def exact64(loaded35, monkeypatch):
    """The tiny Qwen3.5 in float64 with the delta rule computed exactly (float64, token by token):
    HF's chunked rule runs in float32 whatever the model's dtype, and its float32 error depends on
    where the 64-token chunk boundaries fall, which differ between a per-row forward (prompt and
    completion in one sequence) and prompt once (apart). Here both agree to float64 precision
    except HF's float32 norms (~1e-7), so a tolerance of 1e-5 tests the mechanism, not rounding."""
    model, tokenizer = loaded35
    monkeypatch.setattr(modeling_qwen3_5, "torch_chunk_gated_delta_rule", exact_delta_rule)
    monkeypatch.setattr(modeling_qwen3_5, "torch_recurrent_gated_delta_rule", exact_delta_rule)
    return copy.deepcopy(model).double(), tokenizer


def assert_grads_close(ours, theirs, decay_rel):
    """Every gradient within 1e-5 of the reference's norm, the linear layers' decay parameters
    (A_log, dt_bias, in_proj_a) within decay_rel: HF computes the decay
    g = -exp(A_log) * softplus(a.float() + dt_bias) in float32 whatever the model's dtype, and
    their gradient is a sum over all tokens of float32 terms
    that mostly cancel (the sum is 1e-3 to 1e-6 of the terms), so its rounding depends on how the
    tokens are grouped: prompt and completion together (per row) or apart (prompt once)."""
    decay = [k for k in theirs if k.endswith(("A_log", "dt_bias", "in_proj_a.weight"))]
    assert len(decay) == 9 and ours.keys() == theirs.keys()
    assert_grads_equal({k: ours[k] for k in decay}, {k: theirs[k] for k in decay}, rel=decay_rel)
    assert_grads_equal({k: v for k, v in ours.items() if k not in decay},
                       {k: v for k, v in theirs.items() if k not in decay})


def as64(batch):
    return dict(batch, visuals=[v if v is None else dict(v, pixel_values=v["pixel_values"].double())
                                for v in batch["visuals"]])


def test_exact_delta_rule_is_hf_delta_rule():
    """The float64 oracle against HF's chunked and recurrent rules (float32) on random inputs."""
    g = torch.Generator().manual_seed(0)
    B, L, Hk, Hv, dk, dv = 2, 100, 2, 4, 16, 16
    q, k = torch.randn(B, L, Hk, dk, generator=g), torch.randn(B, L, Hk, dk, generator=g)
    v = torch.randn(B, L, Hv, dv, generator=g)
    decay, beta = -torch.rand(B, L, Hv, generator=g), torch.rand(B, L, Hv, generator=g)
    S0 = torch.randn(B, Hv, dk, dv, generator=g)
    ours = exact_delta_rule(q, k, v, decay, beta, S0, True)
    for rule in (modeling_qwen3_5.torch_chunk_gated_delta_rule,
                 modeling_qwen3_5.torch_recurrent_gated_delta_rule):
        theirs = rule(q, k, v, g=decay, beta=beta, initial_state=S0, output_final_state=True,
                      use_qk_l2norm_in_kernel=True)
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours[1].float(), theirs[1], atol=1e-4, rtol=1e-4)


def video(T, H, W, seed, fps=2.0):
    return data.make_visual(frames(T, H, W, seed), [i / fps for i in range(T)], QWEN3_5)


def image(H, W, seed):
    return data.make_visual(frames(1, H, W, seed), None, QWEN3_5)


def mixed_batch35(tokenizer):
    """Left-padded: video (2 temporal patches of 4x4 tokens), image (2x3), text only, video
    (3 patches of 2x4); all four lengths differ."""
    visuals = [video(4, 128, 128, 0), image(64, 96, 1), None, video(6, 64, 128, 2, fps=3.0)]
    prompts = [data.prompt_text(row("video", "Which way does it move?")),
               data.prompt_text(row("image", "What colour?")),
               text_prompt("How many squares are there? Please think."),
               data.prompt_text(row("video", "Why?"))]
    return data.collate(prompts, visuals, tokenizer)


def test_load_hybrid_checkpoint_ids_and_template_from_the_checkpoint(ckpt35, loaded35):
    model, tokenizer = loaded35
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert model.config.text_config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    for kind in ("image_pad", "video_pad", "vision_start", "vision_end"):
        id_in_config = getattr(model.config, kind.replace("_pad", "") + "_token_id")
        assert id_in_config == tokenizer.convert_tokens_to_ids(f"<|{kind}|>")
    # the thinking template, read from the checkpoint: every prompt ends inside an open <think>
    assert tokenizer.assistant_prefill == "<think>\n"
    batch = mixed_batch35(tokenizer)
    assert tokenizer.decode(batch["input_ids"][2]).endswith("<|im_start|>assistant\n<think>\n")
    ids = tokenizer.encode("red</think>\n<answer>A</answer>", add_special_tokens=False)
    turn = "<think>\nred</think>\n<answer>A</answer>"
    assert completion_texts(tokenizer, torch.tensor([ids])) == [turn]


def test_rope_positions_match_hf_get_rope_index(loaded35):
    model, tokenizer = loaded35
    batch = mixed_batch35(tokenizer)
    mask = batch["attention_mask"]
    assert len(set(mask.sum(1).tolist())) == 4  # left padding, 4 lengths
    ours = rope_positions(batch["input_ids"], mask, batch["visuals"], model.config)  # [3, B, L]
    inputs = hf_inputs(batch["input_ids"], batch["visuals"], model.config)
    theirs, _ = model.model.get_rope_index(batch["input_ids"], inputs["mm_token_type_ids"],
                                           inputs["image_grid_thw"], inputs["video_grid_thw"], mask)
    assert torch.equal(ours, theirs)


def prefill(model, batch):
    """The language model over a batch of prompts with a cache: (last hidden [B, D], the cache)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = rope_positions(ids, mask, batch["visuals"], model.config)  # [3, B, L]
    with torch.no_grad():
        out = model.model.language_model(**embed_prompts(model, ids, batch["visuals"]),
                                         attention_mask=mask, position_ids=positions,
                                         use_cache=True)
    return out.last_hidden_state[:, -1], out.past_key_values


def test_left_padding_does_not_change_a_prompt(loaded35, monkeypatch):
    """The shortest prompt alone and left-padded in the batch (over 64 pads): the same last hidden
    state, the same conv and recurrent states in every linear layer (within 1e-5), the same greedy
    completion."""
    model, tokenizer = loaded35
    batch = mixed_batch35(tokenizer)
    b = int(batch["attention_mask"].sum(1).argmin())
    pads = int((batch["attention_mask"][b] == 0).sum())
    assert pads > 64  # more than one chunk of the chunked delta rule
    alone = data.collate([tokenizer.decode(batch["input_ids"][b, pads:])[:-len("<think>\n")]],
                         [batch["visuals"][b]], tokenizer)
    assert torch.equal(alone["input_ids"][0], batch["input_ids"][b, pads:])
    h_batch, cache_batch = prefill(model, batch)
    h_alone, cache_alone = prefill(model, alone)
    torch.testing.assert_close(h_batch[b:b + 1], h_alone, atol=1e-5, rtol=0)
    linear = [i for i, layer in enumerate(cache_alone.layers) if linear_state.is_linear(layer)]
    assert len(linear) == 3
    for i in linear:
        padded, unpadded = cache_batch.layers[i], cache_alone.layers[i]
        for name in ("conv_states", "recurrent_states"):
            theirs, ours = getattr(unpadded, name)[0], getattr(padded, name)[0][b:b + 1]
            assert theirs.norm() > 0 and (ours - theirs).norm() <= 1e-5 * theirs.norm(), (i, name)
    # and sampling from it: greedy decoding of the padded prompt = of the prompt alone
    decode = lambda prompts: generate(model, prompts, n=1, max_new_tokens=12, temperature=0,
                                      stop_ids=[])["completion_ids"]  # [B, 12]
    assert torch.equal(decode(batch)[b], decode(alone)[0])
    # if the linear layers saw the pads (not zeroed), the padded prompt would differ: this can fail
    monkeypatch.setattr(modeling_qwen3_5, "apply_mask_to_padding_states", lambda h, mask: h)
    h_unmasked, _ = prefill(model, batch)
    assert (h_unmasked[b] - h_alone[0]).abs().max() > 1e-3


def test_greedy_generate_matches_hf_generate_and_rows_leave(loaded35):
    """Greedy decoding against HF generate, once with the default stop tokens and once with stop ids
    that end the four prompts' rows at different steps (our finished rows leave the batch with their
    states; HF keeps and pads them): token for token."""
    model, tokenizer = loaded35
    batch = mixed_batch35(tokenizer)
    hf_kwargs = hf_inputs(batch["input_ids"], batch["visuals"], model.config)
    rows = []  # rows in each language-model call
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        for stops, T in [(stop_token_ids(tokenizer), 10), (list(range(0, 500, 7)), 24)]:
            rows.clear()
            out = generate(model, batch, n=[3, 1, 2, 2], max_new_tokens=T, temperature=0,
                           stop_ids=stops)
            model.model.rope_deltas = None
            hf_out = model.generate(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"], **hf_kwargs,
                                    do_sample=False, max_new_tokens=T,
                                    eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            hf_rows = hf_out[:, batch["input_ids"].shape[1]:][out["prompt_index"]]  # [R, T']
            assert torch.equal(out["completion_ids"], hf_rows)
        assert len(set(out["lengths"].tolist())) >= 3 and rows[1] == 8 and rows[-1] < 8  # rows left
    finally:
        hook.remove()


def scored(model, batch, rows, weights, per_row=False, temperature=1.0, micro_batch_size=None):
    """(log-probs, gradients of sum(weights * log-probs)) of rows = (prompt_index, completion_ids,
    lengths): prompt once (token_logprobs), or per_row (the plain HF forward over full rows)."""
    if per_row:
        return grads_of(model, lambda: hf_completion_logprobs(model, batch, *rows, temperature)[0],
                        weights)
    return grads_of(model, lambda: token_logprobs(VisionOnceLM(model), batch, *rows, temperature,
                                                  micro_batch_size), weights)


def test_sampled_rows_leave_the_batch_with_their_states(loaded35):
    """Sampling (temperature 1, top_p 0.9): with stop ids, rows finish at different steps and leave
    the batch, their conv, recurrent and key/value states dropped; every row's tokens up to its stop
    equal those of the same seed's run without stop ids (no row ever leaves): the states of the
    rows that stay are untouched by the compaction."""
    model, tokenizer = loaded35
    batch = mixed_batch35(tokenizer)
    rows = []  # rows in each language-model call
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    run = lambda stops: generate(model, batch, n=[3, 1, 2, 2], max_new_tokens=32, temperature=1.0,
                                 top_p=0.9, generator=torch.Generator().manual_seed(0),
                                 stop_ids=stops)
    try:
        kept = run([])
        rows.clear()
        left = run(list(range(0, 500, 11)))
    finally:
        hook.remove()
    assert rows[1] == 8 and rows[-1] < 8 and len(set(left["lengths"].tolist())) >= 3  # rows left
    for r, n in enumerate(left["lengths"].tolist()):
        assert torch.equal(left["completion_ids"][r, :n], kept["completion_ids"][r, :n]), r
    assert len({tuple(r) for r in kept["completion_ids"][:3].tolist()}) == 3  # rows of a prompt


@pytest.mark.parametrize("kind", ["mixed", "video", "image"])
def test_prompt_once_logprobs_and_gradients_match_hf(exact64, kind):
    """Each prompt once (its conv and recurrent states and the attention layer's keys/values shared
    by its rows in the autograd graph) against the per-row HF forward: log-probs within 1e-5, every
    gradient within 1e-5 of its norm (decay parameters: assert_grads_close); several prompts per
    micro-batch; mixed: T = 70 > one 64-token chunk of the delta rule, and T = 1 (one step from the
    prompt's states)."""
    model, tokenizer = exact64
    batch = as64(mixed_batch35(tokenizer))
    pick = {"mixed": [0, 1, 2, 3], "video": [0, 3], "image": [1]}[kind]
    batch = {"input_ids": batch["input_ids"][pick], "attention_mask": batch["attention_mask"][pick],
             "visuals": [batch["visuals"][p] for p in pick]}
    counts = {"mixed": [3, 2, 1, 2], "video": [2, 3], "image": [3]}[kind]
    for T in {"mixed": (70, 1), "video": (5,), "image": (5,)}[kind]:
        rows = random_completions(tokenizer, counts, T=T, seed=T)
        weights = torch.randn(rows[1].shape, generator=torch.Generator().manual_seed(1))  # [R, T]
        logp, ours = scored(model, batch, rows, weights, temperature=0.7)
        ref, theirs = scored(model, batch, rows, weights, per_row=True, temperature=0.7)
        torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
        assert ours["model.language_model.layers.0.linear_attn.A_log"].abs().sum() > 0
        assert_grads_close(ours, theirs, decay_rel=1e-4)


def test_prompt_once_in_float32_with_hf_kernels(loaded35):
    """The real path (float32, HF's chunked delta rule or its kernels): log-probs within 1e-5 and
    gradients within 1e-5 of their norm, except the linear layers' decay parameters
    (assert_grads_close): their gradient sums exp(cumulative decay) differences over 64-token chunks
    whose boundaries differ between the two computations; measured 1.7e-5 here (up to 1.6e-4 with
    transformers' default decay init), the size of HF's own float32 error on them (2e-5 to 7e-5
    against the exact float64 rule), so they get 1e-4."""
    model, tokenizer = loaded35
    batch = mixed_batch35(tokenizer)
    rows = random_completions(tokenizer, [3, 2, 1, 2], T=70, seed=70)
    weights = torch.randn(rows[1].shape, generator=torch.Generator().manual_seed(1))  # [R, T]
    logp, ours = scored(model, batch, rows, weights)
    ref, theirs = scored(model, batch, rows, weights, per_row=True)
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    assert_grads_close(ours, theirs, decay_rel=1e-4)


def test_prompt_once_with_gradient_checkpointing_and_micro_batches(exact64, monkeypatch):
    """HF's non-reentrant gradient checkpointing replays each layer in backward: the linear layers'
    recorded states are kept (not recorded twice), and the result equals the per-row forward; a
    group cut over two micro-batches too. If the completions did not get the prompt's states, the
    engine says so."""
    model, tokenizer = exact64
    batch = as64(mixed_batch35(tokenizer))
    rows = random_completions(tokenizer, [5, 1, 1, 3], T=9, seed=5)
    weights = torch.randn(rows[1].shape, generator=torch.Generator().manual_seed(6))  # [R, T]
    assert len(micro_batches(rows[0], 3)) == 4
    ref, theirs = scored(model, batch, rows, weights, per_row=True)
    calls = []  # Gated DeltaNet calls of layer 0: forward passes plus replays
    layer0 = model.model.language_model.layers[0].linear_attn
    hook = layer0.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        logp, ours = scored(model, batch, rows, weights, micro_batch_size=3)
        monkeypatch.setattr(linear_state.SharedLinearStates, "get_recurrent_state",
                            lambda *a, **k: None)
        with pytest.raises(RuntimeError, match="layers read the prompt cache"):
            token_logprobs(VisionOnceLM(model), batch, *rows)
    finally:
        model.activation_checkpointing_disable()
        model.eval()
        hook.remove()
    # 4 micro-batches x (prompts, completions) x (forward, replay), + the 2 calls of the error
    assert len(calls) == 4 * 2 * 2 + 2
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    assert_grads_close(ours, theirs, decay_rel=1e-4)


def test_lora_targets_cover_every_language_and_vision_linear(loaded35):
    model, _ = loaded35
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for part, prefix in [("language", "model.language_model."), ("vision", "model.visual.")]:
        inside = [n for n in names if n.startswith(prefix)]
        assert inside and all(re.fullmatch(QWEN3_5.lora_targets[part], n) for n in inside), part
    assert any("linear_attn.in_proj_qkv" in n for n in names)


def test_thinking_only_for_a_family_that_thinks(ckpt35, tmp_path):
    """The same thinking template under a Qwen3-VL config is refused (Qwen3-VL-Thinking); a Qwen3.5
    checkpoint whose template does not open <think> gets no prefill."""
    tokenizer = AutoTokenizer.from_pretrained(ckpt35)
    from families import assistant_prefill
    from families import QWEN3_VL
    with pytest.raises(ValueError, match="is a Thinking checkpoint"):
        assistant_prefill(tokenizer, "x", QWEN3_VL)
    from demo import QWEN3_CHAT_TEMPLATE
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    assert assistant_prefill(tokenizer, "x", QWEN3_5) == ""


def exact_delta_rule_everywhere():
    """exact64's patch, in a process of its own (the DDP ranks)."""
    modeling_qwen3_5.torch_chunk_gated_delta_rule = exact_delta_rule
    modeling_qwen3_5.torch_recurrent_gated_delta_rule = exact_delta_rule


def ddp_half(ckpt, out):
    """Run by accelerate on 2 CPU processes: DDP-wrapped VisionOnceLM over the float64 tiny Qwen3.5
    with the exact delta rule, gradient checkpointing, one forward and backward per micro-batch
    (no_sync but the last), as tgrpo.py trains; the rows of test_model's DDP test (rank 1 cuts a
    group over two micro-batches)."""
    from accelerate import Accelerator
    exact_delta_rule_everywhere()
    accelerator = Accelerator()
    model, tokenizer = load_model(ckpt, dtype=torch.float64)
    model.train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    policy = accelerator.prepare(VisionOnceLM(model))
    batch = as64(mixed_batch35(tokenizer))
    prompt_index, completion_ids, lengths, weights = ddp_rows(tokenizer, accelerator.process_index)
    chunks = micro_batches(prompt_index, 3)
    for j, rows in enumerate(chunks):
        with contextlib.nullcontext() if j == len(chunks) - 1 else accelerator.no_sync(policy):
            logp = token_logprobs(policy, batch, prompt_index[rows], completion_ids[rows],
                                  lengths[rows])
            accelerator.backward((logp * weights[rows]).sum())
    if accelerator.is_main_process:
        grads = {k: p.grad for k, p in model.named_parameters()}
        torch.save({"grads": grads, "chunks": len(chunks)}, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()


@pytest.mark.slow
def test_prompt_once_under_ddp(ckpt35, exact64, tmp_path):
    """2-process DDP: the averaged gradients equal the per-row reference over both ranks' rows."""
    run_script("test_qwen3_5.py", str(ckpt35), str(tmp_path / "ddp.pt"), processes=2)
    got = torch.load(tmp_path / "ddp.pt")
    assert got["chunks"] == 2
    model, tokenizer = exact64
    batch = as64(mixed_batch35(tokenizer))

    def reference():  # DDP averages the two ranks' gradients
        losses = []
        for rank in (0, 1):
            prompt_index, completion_ids, lengths, weights = ddp_rows(tokenizer, rank)
            logp = hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths)[0]
            losses.append((logp * weights).sum())
        return (losses[0] + losses[1]) / 2

    _, theirs = grads_of(model, reference, torch.ones((), dtype=torch.float64))
    assert_grads_close(got["grads"], theirs, decay_rel=1e-4)


if __name__ == "__main__":
    ddp_half(*sys.argv[1:])
