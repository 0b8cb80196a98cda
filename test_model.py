"""Tests of model.py on a tiny random Qwen2.5-VL: positions, sampling engine and log-probs must agree with
the Hugging Face model's own computations. Run: python -m pytest -q test_model.py
(`python test_model.py CKPT OUT` is the 2-process DDP half of test_prompt_once_under_ddp.)"""

import contextlib
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer, StaticCache

import data
from conftest import run_script
from demo import make_tiny_checkpoint
from model import (VisionOnceLM, continue_positions, embed_prompts, generate, head_logprobs, load_model,
                   micro_batches, rope_positions, sample_next, stop_token_ids, token_logprobs)

TEXTS = [data.QUESTION_TEMPLATE, *data.TYPE_TEMPLATE.values(), data.SYSTEM_PROMPT,
         "<think>let me think, the red square moves left. wait, yes.</think>\n<answer>A</answer>",
         "What colour is the square?Options:\nA. red\nB. blue\nC. green\nD. yellow\n", "How many squares? 3.14 42"]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    make_tiny_checkpoint(path, TEXTS)
    return path


@pytest.fixture(scope="session")
def loaded(ckpt):
    return load_model(ckpt)


def frames(T, H, W, seed):
    return torch.rand(T, 3, H, W, generator=torch.Generator().manual_seed(seed))  # [T, 3, H, W] in [0, 1]


def row(data_type, question):
    return {"problem": question, "data_type": data_type, "problem_type": "multiple choice",
            "options": ["A. red", "B. blue"]}


def text_prompt(question):
    return (f"<|im_start|>system\n{data.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def mixed_batch(tokenizer):
    """Left-padded batch of 4 prompts of different lengths: video, image, text only, video.
    Videos are chosen so that HF 5.23's rope index agrees with Qwen2.5-VL's (see the long-video test)."""
    visuals = [data.make_visual(frames(4, 112, 112, 0), 1.0),   # grid (2, 8, 8): 32 tokens, temporal ids 0, 2
               data.make_visual(frames(1, 56, 84, 1), None),    # grid (1, 4, 6): 6 tokens
               None,
               data.make_visual(frames(4, 56, 112, 2), 0.5)]    # grid (2, 4, 8): 16 tokens, temporal ids 0, 1
    prompts = [data.prompt_text(row("video", "Which way does it move?")),
               data.prompt_text(row("image", "What colour?")),
               text_prompt("How many squares are there? Please think."),
               data.prompt_text(row("video", "Why?"))]
    return data.collate(prompts, visuals, tokenizer)


def hf_inputs(input_ids, visuals, config):
    """What HF Qwen2.5-VL wants for rows that each carry their own visual: token types, and the visuals'
    pixels concatenated in row order, images and videos separately."""
    types = torch.zeros_like(input_ids)  # [B, L] 0 text, 1 image, 2 video
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    images = [v for v in visuals if v is not None and v["kind"] == "image"]
    videos = [v for v in visuals if v is not None and v["kind"] == "video"]
    out = {"mm_token_type_ids": types}
    if images:
        out |= {"pixel_values": torch.cat([v["pixel_values"] for v in images]),
                "image_grid_thw": torch.stack([v["grid_thw"] for v in images])}
    if videos:
        out |= {"pixel_values_videos": torch.cat([v["pixel_values"] for v in videos]),
                "video_grid_thw": torch.stack([v["grid_thw"] for v in videos])}
        if videos[0]["second_per_grid_t"] is not None:  # Qwen2.5-VL; Qwen3-VL's time is in the text
            out["second_per_grid_ts"] = torch.tensor([v["second_per_grid_t"] for v in videos])
    return out


def hf_completion_logprobs(hf, batch, prompt_index, completion_ids, lengths, temperature=1.0, labels=False):
    """Reference: plain HF forward over full rows (each row re-encodes its own copy of the visual)."""
    T, Lp = completion_ids.shape[1], batch["input_ids"].shape[1]
    completion_mask = torch.arange(T) < lengths[:, None]  # [R, T]
    input_ids = torch.cat([batch["input_ids"][prompt_index], completion_ids], dim=1)  # [R, Lp+T]
    mask = torch.cat([batch["attention_mask"][prompt_index], completion_mask.long()], dim=1)  # [R, Lp+T]
    visuals = [batch["visuals"][p] for p in prompt_index.tolist()]
    hf.model.rope_deltas = None  # HF caches it across calls; start clean
    kwargs = hf_inputs(input_ids, visuals, hf.config)
    if labels:  # SFT-style labels: prompt and padding ignored
        kwargs["labels"] = torch.cat([torch.full_like(batch["input_ids"][prompt_index], -100),
                                      completion_ids.masked_fill(~completion_mask, -100)], dim=1)
    out = hf(input_ids=input_ids, attention_mask=mask, **kwargs)
    logits = out.logits[:, Lp - 1: Lp - 1 + T].float() / temperature  # [R, T, V]
    logp = logits.log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)  # [R, T]
    return logp * completion_mask, out.loss


def video_batch(tokenizer):
    """Two video prompts of different lengths (so one is left-padded) and grids."""
    visuals = [data.make_visual(frames(4, 112, 112, 3), 1.0), data.make_visual(frames(4, 56, 112, 4), 0.5)]
    prompts = [data.prompt_text(row("video", "Which way does it move?")), data.prompt_text(row("video", "Why?"))]
    return data.collate(prompts, visuals, tokenizer)


def image_batch(tokenizer):
    """Two image prompts of different lengths and grids."""
    visuals = [data.make_visual(frames(1, 56, 84, 5), None), data.make_visual(frames(1, 84, 56, 6), None)]
    prompts = [data.prompt_text(row("image", "What colour is the square on the left?")),
               data.prompt_text(row("image", "What colour?"))]
    return data.collate(prompts, visuals, tokenizer)


def grads_of(model, logp_fn, weights):
    """(log-probs, parameter gradients) of sum(weights * logp_fn())."""
    model.zero_grad(set_to_none=True)
    logp = logp_fn()
    (logp * weights).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logp.detach(), grads


def assert_grads_equal(ours, theirs, rel=1e-5):
    """Every parameter's gradient within `rel` of the reference, relative to the reference's norm."""
    assert ours.keys() == theirs.keys()
    for k in theirs:
        error = ((ours[k] - theirs[k]).norm() / theirs[k].norm()).item()
        assert error <= rel, f"{k}: relative error {error:.1e}"


def random_completions(tokenizer, counts, T, seed):
    """Completion rows of plain (non-special) tokens with varied lengths."""
    g = torch.Generator().manual_seed(seed)
    prompt_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # [R]
    first_special = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    completion_ids = torch.randint(0, first_special, (len(prompt_index), T), generator=g)  # [R, T]
    lengths = torch.randint(1, T + 1, (len(prompt_index),), generator=g)  # [R]
    lengths[0] = T
    return prompt_index, completion_ids, lengths


def test_tiny_checkpoint_loads_like_a_real_one(ckpt, loaded, tmp_path):
    model, tokenizer = loaded
    ids = [tokenizer.convert_tokens_to_ids(t) for t in
           ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]]
    first = ids[0]
    assert ids == [first, first + 1, first + 2, first + 9, first + 10, first + 12, first + 13]  # Qwen's order
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    assert type(tokenizer).__name__ == "Qwen2Tokenizer" and tokenizer.padding_side == "left"
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert (model.config.vision_start_token_id, model.config.vision_end_token_id,
            model.config.image_token_id, model.config.video_token_id) == tuple(ids[3:])
    assert list(model.generation_config.eos_token_id) == stop_token_ids(tokenizer) == [ids[2], ids[0]]
    assert tokenizer.decode(tokenizer.encode("<|im_start|>wait, 42<|im_end|>"), skip_special_tokens=True) == "wait, 42"
    # the chat template renders SPEC 1.2's ChatML, which is also what data.prompt_text builds
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    rendered = AutoTokenizer.from_pretrained(ckpt).apply_chat_template(messages, tokenize=False,
                                                                       add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        "<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n<|im_start|>assistant\n")
    # deterministic from the seed, different across seeds
    make_tiny_checkpoint(tmp_path / "same", TEXTS)
    make_tiny_checkpoint(tmp_path / "other", TEXTS, seed=1)
    a, b, c = (load_file(p / "model.safetensors") for p in (ckpt, tmp_path / "same", tmp_path / "other"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    assert json.load(open(ckpt / "tokenizer.json")) == json.load(open(tmp_path / "same" / "tokenizer.json"))


def test_rope_positions_match_hf_get_rope_index(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    mask = batch["attention_mask"]
    assert len(set(mask.sum(1).tolist())) == 4  # real left padding in every row but the longest
    ours = rope_positions(batch["input_ids"], mask, batch["visuals"], model.config)  # [3, B, L]
    kw = hf_inputs(batch["input_ids"], batch["visuals"], model.config)
    theirs, _ = model.model.get_rope_index(batch["input_ids"], kw.pop("mm_token_type_ids"), attention_mask=mask,
                                           **{k: v for k, v in kw.items() if "grid" in k})
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours[0], ours[1])  # the visual rows really are 3-D


def test_rope_positions_follow_qwen25_after_a_long_video():
    """Worked examples with numbers by hand. The video case is where transformers 5.23's get_rope_index
    resumes text at start + max(h, w) = 4 instead of Qwen2.5-VL's max position + 1 = 9."""
    class Config:  # only what rope_positions reads
        model_type, image_token_id, video_token_id = "qwen2_5_vl", 7, 8
        class vision_config:
            spatial_merge_size, tokens_per_second = 2, 2
    # video grid (4, 4, 4): 4 frame pairs of 2x2 merged tokens, 1 s per pair -> temporal ids 0, 2, 4, 6
    video = {"kind": "video", "family": "qwen2_5_vl", "grid_thw": torch.tensor([4, 4, 4]),
             "second_per_grid_t": 1.0}
    ids = torch.tensor([[0, 1, 5] + [8] * 16 + [6, 1]])  # pad, text, <vs>, 16 video tokens, <ve>, text
    mask = torch.tensor([[0] + [1] * 20])
    pos = rope_positions(ids, mask, [video], Config)[:, 0]  # [3, L]
    vt = torch.tensor([0, 2, 4, 6]).repeat_interleave(4) + 2
    vh = torch.tensor([0, 0, 1, 1]).repeat(4) + 2
    vw = torch.tensor([0, 1, 0, 1]).repeat(4) + 2
    assert pos[0].tolist() == [0, 0, 1] + vt.tolist() + [9, 10]
    assert pos[1].tolist() == [0, 0, 1] + vh.tolist() + [9, 10]
    assert pos[2].tolist() == [0, 0, 1] + vw.tolist() + [9, 10]
    assert continue_positions(pos[:, None], 2)[:, 0].tolist() == [[11, 12]] * 3
    # the docstring's image example: grid (1, 4, 6) -> 2x3 merged tokens
    image = {"kind": "image", "family": "qwen2_5_vl", "grid_thw": torch.tensor([1, 4, 6]),
             "second_per_grid_t": None}
    ids = torch.tensor([[0, 1, 5] + [7] * 6 + [6, 1]])
    pos = rope_positions(ids, torch.tensor([[0] + [1] * 10]), [image], Config)[:, 0]
    assert pos.tolist() == [[0, 0, 1, 2, 2, 2, 2, 2, 2, 5, 6], [0, 0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
                            [0, 0, 1, 2, 3, 4, 2, 3, 4, 5, 6]]
    with pytest.raises(ValueError, match="row 0"):  # a visual without its pad tokens fails loudly
        rope_positions(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), [image], Config)


def test_greedy_generate_matches_hf_generate(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    out = generate(model, batch, n=1, max_new_tokens=12, temperature=0)
    model.model.rope_deltas = None
    hf_out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            **hf_inputs(batch["input_ids"], batch["visuals"], model.config), do_sample=False,
                            max_new_tokens=12, eos_token_id=stop_token_ids(tokenizer),
                            pad_token_id=tokenizer.pad_token_id)
    hf_completions = hf_out[:, batch["input_ids"].shape[1]:]  # [B, T]
    assert torch.equal(out["completion_ids"], hf_completions)
    assert out["prompt_index"].tolist() == [0, 1, 2, 3]
    assert (out["lengths"] > 5).all()  # non-trivial sequences were compared ...
    assert len({tuple(r) for r in out["completion_ids"].tolist()}) == 4  # ... and they differ per prompt
    # a prompt's cache copied into several rows decodes exactly like the prompt alone
    copies = generate(model, batch, n=[2, 1, 1, 3], max_new_tokens=12, temperature=0)
    assert torch.equal(copies["completion_ids"], out["completion_ids"][copies["prompt_index"]])


def test_token_logprobs_match_hf_forward(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [3, 2, 1, 2], T=7, seed=0)
    with torch.no_grad():
        ref, _ = hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths, temperature=0.7)
        ours = token_logprobs(model, batch, prompt_index, completion_ids, lengths, temperature=0.7)
        chunked = token_logprobs(VisionOnceLM(model), batch, prompt_index, completion_ids, lengths,
                                 temperature=0.7, micro_batch_size=3)
    assert ours.dtype == torch.float32 and ours.shape == completion_ids.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=0)
    assert (ours[torch.arange(7) >= lengths[:, None]] == 0).all() and (ours[:, 0] < 0).all()
    # SFT: -mean token log-prob of the target = HF's cross-entropy over the target tokens
    with torch.no_grad():
        _, hf_loss = hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths, labels=True)
        logp = token_logprobs(model, batch, prompt_index, completion_ids, lengths)
    torch.testing.assert_close(-logp.sum() / lengths.sum(), hf_loss, atol=1e-5, rtol=0)


def test_vision_once_gradients_equal_per_row_gradients(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [3, 2, 0, 2], T=5, seed=1)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(2))  # [R, T]

    seen = []  # patches that went through the vision tower
    hook = model.model.visual.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        model.zero_grad()
        (token_logprobs(VisionOnceLM(model), batch, prompt_index, completion_ids, lengths) * weights).sum().backward()
        ours = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        (hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths)[0] * weights).sum().backward()
        theirs = {k: p.grad.clone() for k, p in model.named_parameters()}
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    used = [batch["visuals"][p] for p in (0, 1, 3)]
    assert seen[0] == sum(len(v["pixel_values"]) for v in used)  # each visual encoded once, not per row
    assert sum(seen[1:]) == sum(len(batch["visuals"][p]["pixel_values"]) for p in prompt_index.tolist())  # HF
    assert ours["model.visual.patch_embed.proj.weight"].abs().sum() > 0
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("kind", ["video", "image", "mixed"])
def test_prompt_once_equals_per_row_forward(loaded, kind):
    """Several prompts per micro-batch, left padding, a prompt with no rows: the language model runs over
    the prompts once and the R completions once, and log-probs and every parameter's gradient equal
    the plain forward over full rows (each row its own prompt) to 1e-5."""
    model, tokenizer = loaded
    batch, counts = {"video": (video_batch, [3, 4]), "image": (image_batch, [2, 3]),
                     "mixed": (mixed_batch, [3, 2, 0, 2])}[kind]
    batch = batch(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, counts, T=6, seed=3)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(4))  # [R, T]
    seen = []  # [rows, tokens] of every language-model call
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(list(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        logp, ours = grads_of(model, lambda: token_logprobs(VisionOnceLM(model), batch, prompt_index,
                                                            completion_ids, lengths, temperature=0.9), weights)
    finally:
        hook.remove()
    ref, theirs = grads_of(model, lambda: hf_completion_logprobs(model, batch, prompt_index, completion_ids,
                                                                 lengths, temperature=0.9)[0], weights)
    used = prompt_index.unique()  # prompts with rows, without their all-padding columns
    assert seen == [[len(used), int(batch["attention_mask"][used].any(0).sum())], [len(prompt_index), 6]]
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    assert_grads_equal(ours, theirs)


def test_prompt_once_with_micro_batches_and_gradient_checkpointing(loaded, monkeypatch):
    """A group larger than a micro-batch is cut, so one prompt runs in two micro-batches; with HF's
    non-reentrant gradient checkpointing (layers replayed in backward) the result is unchanged."""
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [5, 1, 1, 3], T=5, seed=5)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(6))  # [R, T]
    assert [c.tolist() for c in micro_batches(prompt_index, 3)] == [[0, 1, 2], [3, 4, 5], [6], [7, 8, 9]]
    ref, theirs = grads_of(model, lambda: hf_completion_logprobs(model, batch, prompt_index, completion_ids,
                                                                 lengths)[0], weights)
    calls = []  # attention calls of layer 0: forward passes plus replays
    hook = model.model.language_model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        logp, ours = grads_of(model, lambda: token_logprobs(VisionOnceLM(model), batch, prompt_index, completion_ids,
                                                            lengths, micro_batch_size=3), weights)
        # HF's checkpointed layers drop caches unless told otherwise: then the completions would not see
        # their prompt, which must fail loudly
        monkeypatch.setattr("model.cache_through_checkpointing", lambda lm: contextlib.nullcontext())
        with pytest.raises(RuntimeError, match="layers read the prompt cache"):
            token_logprobs(VisionOnceLM(model), batch, prompt_index, completion_ids, lengths)
    finally:
        model.activation_checkpointing_disable()
        model.eval()
        hook.remove()
    assert len(calls) == 2 * 4 * 2 + 2  # 4 micro-batches x (prompts, completions) x (forward, replay), + the error
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    assert_grads_equal(ours, theirs)


# rows of each rank in the DDP test: every micro-batch of 3 holds a visual (DDP needs the vision tower's
# gradients on every rank); rank 1 cuts prompt 3's group of 4 over two micro-batches
DDP_COUNTS = ([3, 2, 1, 0], [0, 1, 0, 4])


def ddp_rows(tokenizer, rank):
    prompt_index, completion_ids, lengths = random_completions(tokenizer, DDP_COUNTS[rank], T=5, seed=10 + rank)
    if rank == 1:  # prompt 3's rows first, then prompt 1's
        prompt_index = prompt_index.flip(0)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(20 + rank))  # [R, T]
    return prompt_index, completion_ids, lengths, weights


def ddp_half(ckpt, out, make_batch=None):
    """Run by accelerate on 2 CPU processes: DDP-wrapped VisionOnceLM, gradient checkpointing, one forward
    and backward per micro-batch (no_sync but the last), as tgrpo.py trains. make_batch: another
    family's mixed_batch (test_qwen3vl.py)."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    model, tokenizer = load_model(ckpt)
    model.train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    policy = accelerator.prepare(VisionOnceLM(model))
    calls = []
    policy.register_forward_pre_hook(lambda *a: calls.append(1))  # the DDP wrapper's forward
    batch = (make_batch or mixed_batch)(tokenizer)
    prompt_index, completion_ids, lengths, weights = ddp_rows(tokenizer, accelerator.process_index)
    chunks = micro_batches(prompt_index, 3)
    for j, rows in enumerate(chunks):
        with contextlib.nullcontext() if j == len(chunks) - 1 else accelerator.no_sync(policy):
            logp = token_logprobs(policy, batch, prompt_index[rows], completion_ids[rows], lengths[rows])
            accelerator.backward((logp * weights[rows]).sum())
    if accelerator.is_main_process:
        torch.save({"grads": {k: p.grad for k, p in model.named_parameters()}, "calls": len(calls),
                    "chunks": len(chunks)}, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group: a rank exiting with gloo's threads alive can abort


@pytest.mark.slow
def test_prompt_once_under_ddp(ckpt, loaded, tmp_path):
    """2-process DDP: the averaged gradients equal the per-row reference over both ranks' rows, and DDP
    sees one forward per micro-batch."""
    run_script("test_model.py", str(ckpt), str(tmp_path / "ddp.pt"), processes=2)
    got = torch.load(tmp_path / "ddp.pt")
    assert got["calls"] == got["chunks"] == 2
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)

    def reference():  # DDP averages the two ranks' gradients
        losses = []
        for rank in (0, 1):
            prompt_index, completion_ids, lengths, weights = ddp_rows(tokenizer, rank)
            losses.append((hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths)[0]
                           * weights).sum())
        return (losses[0] + losses[1]) / 2

    _, theirs = grads_of(model, reference, torch.ones(()))
    assert_grads_equal(got["grads"], theirs)


def test_sampling_is_reproducible_and_rows_of_a_prompt_differ(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    run = lambda seed: generate(model, batch, n=[4, 2, 3, 1], max_new_tokens=8, temperature=1.0, top_p=0.95,
                                generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert a["prompt_index"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["completion_ids"], c["completion_ids"])
    rows = a["completion_ids"].tolist()
    assert len({tuple(r) for r in rows[:4]}) == 4 and len({tuple(r) for r in rows[6:9]}) == 3


def reference_generate(model, batch, n, max_new_tokens, temperature, top_p, generator, stop_ids):
    """The engine before it dropped finished rows (the oracle for that change): all R rows decode until
    every row has stopped, torch.multinomial samples."""
    prompt_index = torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n))  # [R]
    stop_ids, pad_id = torch.tensor(stop_ids), model.generation_config.pad_token_id
    lm, embed = model.model.language_model, model.get_input_embeddings()
    with torch.no_grad():
        input_ids, mask = batch["input_ids"], batch["attention_mask"]  # [P, L]
        positions = rope_positions(input_ids, mask, batch["visuals"], model.config)  # [3, P, L]
        out = lm(**embed_prompts(model, input_ids, batch["visuals"]), attention_mask=mask,
                 position_ids=positions, use_cache=True)
        L = input_ids.shape[1]
        cache = StaticCache(config=model.config, max_cache_len=L + max_new_tokens)
        for layer, prefilled in zip(cache.layers, out.past_key_values.layers):
            layer.update(prefilled.keys[prompt_index], prefilled.values[prompt_index])  # [R, H, L, d]
        logits = model.lm_head(out.last_hidden_state[prompt_index, -1])  # [R, V]
        mask = F.pad(mask[prompt_index], (0, max_new_tokens), value=1)  # [R, L+max_new_tokens]
        next_pos = continue_positions(positions, max_new_tokens)[:, prompt_index]  # [3, R, max_new_tokens]
        R = len(prompt_index)
        finished = torch.zeros(R, dtype=torch.bool)
        lengths = torch.full((R,), max_new_tokens)
        tokens = []
        for step in range(max_new_tokens):
            if temperature == 0:
                token = logits.argmax(-1)  # [R]
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)  # [R, V]
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [R]
            token = token.masked_fill(finished, pad_id)
            tokens.append(token)
            stopped = ~finished & torch.isin(token, stop_ids)
            lengths[stopped] = step + 1
            finished |= stopped
            if finished.all() or step == max_new_tokens - 1:
                break
            out = lm(inputs_embeds=embed(token[:, None]), attention_mask=mask[:, :L + step + 1],
                     position_ids=next_pos[:, :, step:step + 1], past_key_values=cache, use_cache=True)
            logits = model.lm_head(out.last_hidden_state[:, -1])  # [R, V]
    return {"prompt_index": prompt_index, "completion_ids": torch.stack(tokens, dim=1), "lengths": lengths,
            "truncated": ~finished}


def test_generate_drops_finished_rows_and_samples_as_before(loaded):
    """Rows stopping at different steps leave the batch, and the output is the one of the engine that
    kept decoding them, for the same seed (sampling and greedy), bit for bit."""
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    stops = list(range(0, tokenizer.convert_tokens_to_ids("<|endoftext|>"), 20))  # ~5% of tokens end a row
    n, T = [6, 4, 5, 3], 40
    rows = []  # rows in each decoding step
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    lengths = []
    try:
        for seed, temperature, top_p in [(0, 1.0, 0.95), (1, 1.0, 1.0), (2, 0.7, 0.8), (3, 0.0, 1.0)]:
            run = lambda fn: fn(model, batch, n=n, max_new_tokens=T, temperature=temperature, top_p=top_p,
                                generator=torch.Generator().manual_seed(seed), stop_ids=stops)
            rows.clear()
            ours = run(generate)
            steps = ours["completion_ids"].shape[1] - 1  # decoding steps after the prefill
            assert rows[0] == 4 and len(rows) == 1 + steps  # the prefill of the 4 prompts, then one call a step
            assert rows[1:] == sorted(rows[1:], reverse=True) and rows[-1] < sum(n)  # the batch shrank
            assert sum(rows[1:]) < 0.8 * sum(n) * steps  # fewer rows computed than with idle rows kept
            ref = run(reference_generate)
            for k in ref:
                assert torch.equal(ours[k], ref[k]), (seed, k)
            lengths += ours["lengths"].tolist()
    finally:
        hook.remove()
    assert len(set(lengths)) > 15 and 0 < lengths.count(T) < len(lengths) / 2  # a real spread, some truncated


def test_sample_next_draws_as_multinomial_for_every_row():
    """sample_next is torch.multinomial written out; rows of a shrunken batch get the numbers they would
    get in the full one."""
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))  # [R, V], flat: samples vary
    probs = torch.softmax(logits / 0.8, dim=-1)
    live = torch.tensor([1, 4, 5])
    for seed in range(5):
        full = sample_next(logits, 0.8, 1.0, torch.Generator().manual_seed(seed))
        assert torch.equal(full, torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))[:, 0])
        some = sample_next(logits[live], 0.8, 1.0, torch.Generator().manual_seed(seed), live, 6)
        assert torch.equal(some, full[live])


def test_stop_ids_lengths_and_truncation(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    run = lambda stop_ids, T: generate(model, batch, n=2, max_new_tokens=T, temperature=1.0, stop_ids=stop_ids,
                                       generator=torch.Generator().manual_seed(3))
    free = run([], 12)  # never stops
    assert free["truncated"].all() and (free["lengths"] == 12).all() and free["completion_ids"].shape == (8, 12)
    stop = free["completion_ids"][0, 4].item()  # force a stop: a token row 0 samples at step 4
    out = run([stop], 12)
    pad = model.generation_config.pad_token_id
    for r, seq in enumerate(free["completion_ids"].tolist()):
        if stop in seq:  # same random stream, so the same tokens up to and including the stop, then pads
            k = seq.index(stop) + 1
            assert out["lengths"][r] == k and not out["truncated"][r]
            assert out["completion_ids"][r, :k].tolist() == seq[:k]
            assert (out["completion_ids"][r, k:] == pad).all()
        else:
            assert out["truncated"][r] and out["lengths"][r] == 12
    assert out["lengths"][0] <= 5
    short = run([], 3)
    assert short["truncated"].all() and short["completion_ids"].shape == (8, 3)


def test_generate_restores_the_model_state_even_on_error(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    model.train()
    model.activation_checkpointing_enable()
    try:
        generate(model, batch, n=1, max_new_tokens=2)
        assert model.training and model.is_activation_checkpointing
        bad = dict(batch, visuals=[None] * 4)  # pad tokens without their visual: must fail loudly
        with pytest.raises(ValueError, match="no visual"):
            generate(model, bad, n=1, max_new_tokens=2)
        assert model.training and model.is_activation_checkpointing
    finally:
        model.activation_checkpointing_disable()
        model.eval()


def test_generate_under_bf16_autocast_agrees_with_a_full_forward(loaded):
    # The GPU setting (fp32 weights, bf16 compute) on CPU. Under autocast RoPE turns keys back into float32 while
    # values stay bf16; a plain StaticCache refused them at the first decoding step (RolloutCache stores both).
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, batch, n=1, max_new_tokens=12, temperature=0)
        T, Lp = out["completion_ids"].shape[1], batch["input_ids"].shape[1]
        input_ids = torch.cat([batch["input_ids"], out["completion_ids"]], dim=1)  # [B, Lp+T]
        mask = torch.cat([batch["attention_mask"], torch.ones_like(out["completion_ids"])], dim=1)
        model.model.rope_deltas = None
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask,
                           **hf_inputs(input_ids, batch["visuals"], model.config)).logits[:, Lp - 1:-1].float()
    assert (out["lengths"] > 5).all()
    # each greedy token is the full forward's argmax, up to bf16 rounding (the KV-cache path sums in another
    # order): its logit is within 0.05 of the largest, where logits are O(1) and bf16 keeps 8 bits
    chosen = logits.gather(-1, out["completion_ids"][..., None]).squeeze(-1)  # [B, T]
    valid = torch.arange(T) < out["lengths"][:, None]
    assert ((logits.max(-1).values - chosen)[valid] < 0.05).all()


def test_checkpointing_recomputes_in_training_not_in_generate(loaded):
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [2, 1, 1, 2], T=5, seed=4)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(5))  # [R, T]

    def grads():
        model.zero_grad()
        (token_logprobs(model, batch, prompt_index, completion_ids, lengths) * weights).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    model.train()
    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    calls = []  # one entry per run of a decoder layer's forward under the checkpoint
    layers = model.model.language_model.layers
    for layer in layers:
        real = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda fn, *a, real=real, **k: real(
            lambda *x: calls.append(1) or fn(*x), *a, **k)
    try:
        generate(model, batch, n=2, max_new_tokens=4)
        assert calls == []                      # generate runs in eval mode: no checkpointing, the KV cache works
        checkpointed = grads()
        # every layer ran 4 times: the prompt pass and the completion pass (prompt once), each again in backward
        assert len(calls) == 4 * len(layers)
    finally:
        model.activation_checkpointing_disable()
        model.eval()
        model.zero_grad(set_to_none=True)
    assert all(torch.equal(plain[k], checkpointed[k]) for k in plain)  # recomputing changes nothing


def test_micro_batches_cut_between_prompt_groups():
    chunks = micro_batches(torch.tensor([0, 0, 0, 1, 1, 2]), 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5]]
    chunks = micro_batches(torch.tensor([0, 0, 0, 0, 0, 1]), 2)  # a group larger than a micro-batch is cut
    assert [c.tolist() for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    assert [c.tolist() for c in micro_batches(torch.tensor([0, 1]), None)] == [[0, 1]]


def test_sample_next_temperature_and_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(2000, -1)  # [2000, 4]
    assert (sample_next(logits, 0, 1.0, None) == 0).all()
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, 0.75, g).tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    counts = torch.bincount(sample_next(logits, 1.0, 1.0, g), minlength=4) / 2000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04, rtol=0)


def test_head_logprobs_in_chunks_equal_log_softmax_and_hold_one_chunk():
    """Hand-made head: chunked log-probs and gradients equal log_softmax's, and no tensor kept for the
    backward has more than one chunk's logits (unchunked keeps all N x V of them)."""
    g = torch.Generator().manual_seed(0)
    N, D, V, chunk = 10, 6, 40, 3
    head = torch.nn.Linear(D, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(0.3 * torch.randn(V, D, generator=g))  # log-probs of order 1: 1e-6 ~ 8 eps
    hidden = torch.randn(2, N // 2, D, generator=g, requires_grad=True)     # [2, 5, D]
    targets = torch.randint(0, V, (2, N // 2), generator=g)                  # [2, 5]
    weights = torch.randn(2, N // 2, generator=g)                           # [2, 5]
    expected = F.log_softmax(hidden @ head.weight.T / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    (expected * weights).sum().backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    for c in (None, chunk, N, 1024):
        hidden.grad = head.weight.grad = None
        largest = []
        # the head's weight is held anyway (a parameter): count what else is kept for the backward
        keep = lambda x: largest.append(0 if x.data_ptr() == head.weight.data_ptr() else x.numel()) or x
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x):
            logp = head_logprobs(head, hidden, targets, 0.7, c)             # [2, 5]
        (logp * weights).sum().backward()
        # a different but exact algorithm: equal to float32 rounding (a few eps of the value)
        torch.testing.assert_close(logp, expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(hidden.grad, grads[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(head.weight.grad, grads[1], atol=1e-6, rtol=1e-6)
        if c is None:
            unchunked = logp.detach(), hidden.grad.clone(), head.weight.grad.clone()
        for ours, theirs in zip((logp, hidden.grad, head.weight.grad), unchunked):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        assert max(largest) >= N * V if c is None else max(largest) < min(c, N) * V + 1
    # hand-computed: 2 words, logits [0, ln 3] -> log-probs [ln 1/4, ln 3/4]
    two = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        two.weight.copy_(torch.tensor([[0.0], [torch.log(torch.tensor(3.0))]]))
    logp = head_logprobs(two, torch.ones(3, 1), torch.tensor([0, 1, 1]), chunk=2)
    torch.testing.assert_close(logp, torch.log(torch.tensor([0.25, 0.75, 0.75])), atol=1e-7, rtol=0)


def test_chunked_head_equals_unchunked_on_the_tiny_model(loaded):
    """VisionOnceLM with a 4-token LM-head chunk (the rows' 7 tokens cut across rows): log-probs and
    every parameter's gradient equal the all-at-once head's within 1e-6 (float32, absolute or
    relative: 8 eps)."""
    model, tokenizer = loaded
    batch = mixed_batch(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [3, 2, 1, 2], T=7, seed=3)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(4))  # [R, T]
    run = lambda chunk: grads_of(model, lambda: token_logprobs(
        VisionOnceLM(model, chunk), batch, prompt_index, completion_ids, lengths, 0.7), weights)
    logp, grads = run(4)
    ref_logp, ref_grads = run(None)
    torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys() and "lm_head.weight" in grads
    for k in grads:
        # the weight's gradient sums the chunks in another order: a few eps of its size
        torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-6, rtol=1e-6)


if __name__ == "__main__":
    ddp_half(*sys.argv[1:])
