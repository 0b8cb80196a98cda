"""Tests for data.py: python -m pytest test_data.py -q (CPU, a few seconds)."""
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

import check_data
import data
from conftest import BAD_MEDIA, ROOT, bad_media, dataset_with_bad_media, decode_or_misbehave
from families import QWEN2_5_VL

DEMO = dict(max_frames=8, fps=2.0, video_min_pixels=56 * 56, video_max_pixels=56 * 56,
            image_min_pixels=56 * 56, image_max_pixels=56 * 56)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small demo world: good videos and images to damage."""
    from demo_world import make_demo_world
    out = tmp_path_factory.mktemp("world")
    return out, make_demo_world(str(out), n_rl=48, n_cot=8, n_eval=4, n_warmup=0)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """A 4 s, 4 fps, 56x56 H.264 video of a square sliding right (16 frames)."""
    from demo_world import write_video
    frames = np.full((16, 56, 56, 3), 20, np.uint8)
    for f in range(16):
        frames[f, 20:36, 2 * f:2 * f + 16] = (220, 40, 40)
    path = str(tmp_path_factory.mktemp("video") / "slide.mp4")
    write_video(path, frames)
    return path


def row(**kw):
    base = {"problem_id": 7, "problem": "Which way?", "data_type": "video", "problem_type": "multiple choice",
            "options": ["A. left", "B. right"], "solution": "<answer>B</answer>", "path": "./videos/a.mp4",
            "data_source": "demo/direction", "process": "<think>It moves right.</think>"}
    return {**base, **kw}


def write_rows(tmp_path, rows, name="rl.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def test_load_rows_media_filters_limit(tmp_path):
    rows = [row(problem_id=i, data_type=["video", "image"][i % 2], path=f"./m/{i}.mp4") for i in range(6)]
    rows[4]["problem_type"], rows[4]["options"], rows[4]["solution"] = "numerical", [], "<answer>3</answer>"
    path = write_rows(tmp_path, rows)
    got = data.load_rows(path)
    assert [r["problem_id"] for r in got] == list(range(6))
    assert got[0]["media"] == os.path.join(str(tmp_path), "m", "0.mp4")
    assert data.load_rows(path, data_root="/data")[1]["media"] == "/data/m/1.mp4"
    assert [r["problem_id"] for r in data.load_rows(path, data_types=["image"])] == [1, 3, 5]
    assert [r["problem_id"] for r in data.load_rows(path, problem_types=["numerical"])] == [4]
    assert [r["problem_id"] for r in data.load_rows(path, data_types=["video"], limit=2)] == [0, 2]
    assert data.load_rows(path, limit=0) == []
    with pytest.raises(ValueError, match="problem_types.*mcq"):
        data.load_rows(path, problem_types=["mcq"])


@pytest.mark.parametrize("bad, field, message", [
    ({"problem_type": "mcq"}, "problem_type", "unknown value 'mcq'"),
    ({"data_type": "audio"}, "data_type", "unknown value 'audio'"),
    ({"problem_id": "17"}, "problem_id", "expected int, got str"),
    ({"problem_id": True}, "problem_id", "expected int, got bool"),
    ({"problem": None}, "problem", "expected str"),
    ({"solution": "B"}, "solution", "no <answer>"),
    ({"solution": "</answer>B<answer>"}, "solution", "no <answer>"),
    ({"options": []}, "options", "non-empty"),
    ({"options": "A. left"}, "options", "list of str"),
    ({"options": ["A. left", 2]}, "options", "list of str"),
    ({"path": ""}, "path", "empty"),
])
def test_load_rows_names_file_row_and_field(tmp_path, bad, field, message):
    path = write_rows(tmp_path, [row(), row(**bad)])
    with pytest.raises(ValueError) as e:
        data.load_rows(path)
    assert f"rl.json: row 1: field '{field}': " in str(e.value) and message in str(e.value)


def test_load_rows_missing_field_process_and_file_level_errors(tmp_path):
    broken = row()
    del broken["data_source"]
    with pytest.raises(ValueError, match=r"rl.json: row 2: field 'data_source': missing"):
        data.load_rows(write_rows(tmp_path, [row(), row(), broken]))
    # scanning stops at the limit, so a bad row after it is never read
    assert len(data.load_rows(write_rows(tmp_path, [row(), row(), broken]), limit=2)) == 2
    no_process = row()
    del no_process["process"]
    path = write_rows(tmp_path, [row(), no_process], "cot.json")
    assert len(data.load_rows(path)) == 2
    with pytest.raises(ValueError, match=r"cot.json: row 1: field 'process'"):
        data.load_rows(path, require_process=True)
    with pytest.raises(ValueError, match=r"rl.json: row 0: not an object"):
        data.load_rows(write_rows(tmp_path, [[1, 2]]))
    with pytest.raises(ValueError, match=r"rl.json: expected a JSON list"):
        data.load_rows(write_rows(tmp_path, {"rows": []}))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        data.load_rows(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError):
        data.load_rows(str(tmp_path / "nope.json"))


INSTRUCTION = ("\nPlease think about this question as if you were a human pondering deeply. Engage in an internal "
               "dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', "
               "etc, or other natural language thought expressions It's encouraged to include self-reflection or "
               "verification in the reasoning process. Provide your detailed reasoning between the <think> </think> "
               "tags, and then give your final answer between the <answer> </answer> tags.")
INSTRUCTION_EVAL = ("\nPlease think about this question as if you were a human pondering deeply. Engage in an internal "
                    "dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it "
                    "down', etc, or other natural language thought expressions It's encouraged to include "
                    "self-reflection or verification in the reasoning process. Provide your detailed reasoning "
                    "between the <think> and"
                    " </think> tags, and then give your final answer between the <answer> and </answer> tags.")
HEAD_VIDEO = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "<|vision_start|><|video_pad|><|vision_end|>")
HEAD_IMAGE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "<|vision_start|><|image_pad|><|vision_end|>")
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("problem_type, data_type, head, question, suffix", [
    ("multiple choice", "video", HEAD_VIDEO, "Which way?Options:\nA. left\nB. right\n",
     " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."),
    ("numerical", "video", HEAD_VIDEO, "Which way?",
     " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."),
    ("OCR", "image", HEAD_IMAGE, "Which way?",
     " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer>"
     " tags."),
    ("free-form", "image", HEAD_IMAGE, "Which way?",
     " Please provide your text answer within the <answer> </answer> tags."),
    ("regression", "video", HEAD_VIDEO, "Which way?",
     " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."),
])
def test_prompt_text_exact(problem_type, data_type, head, question, suffix):
    r = row(problem_type=problem_type, data_type=data_type)
    assert data.question_text(r) == question
    assert data.prompt_text(r) == head + question + INSTRUCTION + suffix + TAIL
    assert data.prompt_text(r, template="eval") == head + question + INSTRUCTION_EVAL + suffix + TAIL


def test_sft_target():
    assert data.sft_target(row()) == "<think>It moves right.</think>\n<answer>B</answer>"


@pytest.mark.parametrize("hw, pixels, expected", [
    ((56, 56), (4 * 784, 256 * 784), (56, 56)),
    ((100, 200), (4 * 784, 256 * 784), (112, 196)),     # round to multiples of 28
    ((1080, 1920), (4 * 784, 128 * 784), (224, 420)),   # too big: scale down, floor
    ((10, 10), (56 * 56, 10**6), (56, 56)),             # too small: scale up, ceil
    ((20, 300), (4 * 784, 256 * 784), (28, 308)),
])
def test_smart_resize(hw, pixels, expected):
    assert data.smart_resize(*hw, *pixels) == expected
    assert data.smart_resize(*hw, *pixels) == hf_smart_resize(*hw, min_pixels=pixels[0], max_pixels=pixels[1])


def test_smart_resize_matches_hf_and_rejects_extreme_aspect():
    rng = np.random.default_rng(0)
    for h, w in rng.integers(28, 3000, size=(300, 2)):
        lo, hi = sorted(int(v) * 784 for v in rng.integers(1, 400, size=2))
        h, w = int(h), int(w)
        assert data.smart_resize(h, w, lo, hi) == hf_smart_resize(h, w, min_pixels=lo, max_pixels=hi), (h, w, lo, hi)
    with pytest.raises(ValueError, match="aspect ratio"):
        data.smart_resize(10, 2500, 4 * 784, 256 * 784)


@pytest.mark.parametrize("total, video_fps, max_frames, expected", [
    (16, 4, 8, [0, 2, 4, 6, 9, 11, 13, 15]),       # 4 s demo clip: 8 frames
    (16, 4, 16, [0, 2, 4, 6, 9, 11, 13, 15]),      # duration*fps = 8 < max_frames
    (300, 30, 16, [0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259, 279, 299]),  # 20 -> 16
    (30, 30, 16, [0, 10, 19, 29]),                 # 1 s: 2 frames raised to min_frames 4
    (99, 30, 16, [0, 20, 39, 59, 78, 98]),         # 3.3 s: 6.6 rounded down to even
    (5, 1, 16, [0, 1, 3, 4]),                      # 10 wanted, only 5 frames -> 4
    (3, 30, 16, [0, 2]),                           # 3 frames -> 2
    (300, 30, 7, [0, 60, 120, 179, 239, 299]),     # odd max_frames -> even
])
def test_video_frame_indices(total, video_fps, max_frames, expected):
    assert data.video_frame_indices(total, video_fps, max_frames) == expected


def test_video_frame_indices_other_fps_and_too_short():
    assert data.video_frame_indices(300, 30, 64, fps=1.0) == data.video_frame_indices(300, 30, 10)
    with pytest.raises(ValueError, match="at least 2 frames"):
        data.video_frame_indices(1, 30, 16)


def oracle(path, min_pixels, max_pixels):
    proc = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    out = proc(images=Image.open(path), return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"][0]


@pytest.mark.parametrize("h, w", [(56, 56), (28, 84), (112, 56), (84, 140), (28, 28)])
def test_patchify_matches_hf_processor_without_resize(tmp_path, h, w):
    path = str(tmp_path / "x.png")
    Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    frames = data.load_image(path, 28 * 28, 1000 * 28 * 28)
    assert frames.shape == (1, 3, h, w)
    pixel_values, grid = data.patchify(frames)
    expected, expected_grid = oracle(path, 28 * 28, 1000 * 28 * 28)
    assert grid.tolist() == expected_grid.tolist() == [1, h // 14, w // 14]
    assert pixel_values.shape == expected.shape == (h * w // 196, 1176)
    torch.testing.assert_close(pixel_values, torch.from_numpy(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pixels", [(4 * 784, 256 * 784), (4 * 784, 8 * 784), (100 * 784, 400 * 784)])
def test_patchify_matches_hf_processor_with_resize(tmp_path, pixels):
    # Both sides resize the uint8 image with PIL bicubic, so the tolerance stays 1e-5 (no resize-kernel slack).
    yy, xx = np.mgrid[0:100, 0:150]
    smooth = np.stack([2 * yy, 1.5 * xx, yy + xx], -1).clip(0, 255).astype(np.uint8)
    path = str(tmp_path / "smooth.png")
    Image.fromarray(smooth).save(path)
    pixel_values, grid = data.patchify(data.load_image(path, *pixels))
    expected, expected_grid = oracle(path, *pixels)
    assert grid.tolist() == expected_grid.tolist()
    torch.testing.assert_close(pixel_values, torch.from_numpy(expected), atol=1e-5, rtol=0)


def test_patchify_video_layout_and_odd_frames():
    frames = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 56, 84) / 10  # frame i has value i/10 everywhere
    pixel_values, grid = data.patchify(frames)
    assert grid.tolist() == [2, 4, 6] and pixel_values.shape == (48, 1176)
    patches = pixel_values.view(2, 24, 3, 2, 14, 14)  # [t, h*w, C, 2, p, p]
    std, mean = torch.tensor(QWEN2_5_VL.image_std), torch.tensor(QWEN2_5_VL.image_mean)
    for t in range(2):
        for k in range(2):  # frames 2t and 2t+1 share a temporal patch, in order
            raw = patches[t, :, :, k] * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
            torch.testing.assert_close(raw, torch.full_like(raw, (2 * t + k) / 10), atol=1e-5, rtol=0)
    odd, odd_grid = data.patchify(frames[:3])  # the last frame is repeated
    assert odd_grid.tolist() == [2, 4, 6]
    torch.testing.assert_close(odd.view(2, 24, 3, 2, 196)[1, :, :, 0], odd.view(2, 24, 3, 2, 196)[1, :, :, 1])
    with pytest.raises(ValueError, match="multiples of 28"):
        data.patchify(torch.zeros(2, 3, 56, 50))


def test_shuffle_frames_frame_level():
    frames = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    out = data.shuffle_frames(frames, torch.Generator().manual_seed(0))
    order = out[:, 0, 0, 0].long()
    assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
    assert torch.equal(out, frames[order])  # whole frames move, nothing else changes
    again = data.shuffle_frames(frames, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    orders = {tuple(data.shuffle_frames(frames, torch.Generator().manual_seed(s))[:, 0, 0, 0].tolist())
              for s in range(10)}
    assert len(orders) > 5  # fresh permutations, not a fixed one
    for s in range(20):  # 2 frames: a raw randperm is the identity half the time; we must always swap
        assert data.shuffle_frames(frames[:2], torch.Generator().manual_seed(s))[:, 0, 0, 0].tolist() == [1.0, 0.0]


def test_shuffle_frames_patch_level_keeps_pairs():
    frames = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    for s in range(20):
        order = data.shuffle_frames(frames, torch.Generator().manual_seed(s), level="patch")[:, 0, 0, 0].long()
        pairs = order.view(4, 2)
        assert torch.equal(pairs[:, 1], pairs[:, 0] + 1) and torch.all(pairs[:, 0] % 2 == 0)
        assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
        four = data.shuffle_frames(frames[:4], torch.Generator().manual_seed(s), level="patch")[:, 0, 0, 0]
        assert four.tolist() == [2, 3, 0, 1]
    with pytest.raises(ValueError, match="even"):
        data.shuffle_frames(frames[:3], torch.Generator(), level="patch")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([data.prompt_text(row())], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>")


def test_collate_expands_placeholders_and_left_pads():
    tok = tiny_tokenizer()
    video = data.make_visual(torch.rand(8, 3, 56, 56), 1.0)
    image = data.make_visual(torch.rand(1, 3, 56, 112), None)
    assert video["kind"] == "video" and video["grid_thw"].tolist() == [4, 4, 4] and video["second_per_grid_t"] == 1.0
    assert image["kind"] == "image" and image["grid_thw"].tolist() == [1, 4, 8] and image["second_per_grid_t"] is None
    prompts = [data.prompt_text(row(data_type="video")), data.prompt_text(row(data_type="image")), "just text"]
    batch = data.collate(prompts, [video, image, None], tok)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    video_pad, image_pad = tok.convert_tokens_to_ids("<|video_pad|>"), tok.convert_tokens_to_ids("<|image_pad|>")
    assert (ids[0] == video_pad).sum() == 16 == video["grid_thw"].prod() // 4
    assert (ids[1] == image_pad).sum() == 8 == image["grid_thw"].prod() // 4
    assert (ids[2] == video_pad).sum() == (ids[2] == image_pad).sum() == 0
    assert batch["visuals"] == [video, image, None]
    for b, (prompt, n, pad) in enumerate(zip(prompts, [16, 8, 0], ["<|video_pad|>", "<|image_pad|>", ""])):
        expected = tok.encode(prompt.replace(pad, pad * n) if pad else prompt, add_special_tokens=False)
        L = len(expected)
        assert mask[b].tolist() == [0] * (ids.shape[1] - L) + [1] * L  # left padding
        assert ids[b, ids.shape[1] - L:].tolist() == expected
        assert torch.all(ids[b, :ids.shape[1] - L] == tok.pad_token_id)
    assert mask[0].all()  # the longest row has no padding


def test_collate_rejects_wrong_placeholders():
    tok = tiny_tokenizer()
    video = data.make_visual(torch.rand(2, 3, 28, 28), 1.0)
    video_prompt, image_prompt = data.prompt_text(row(data_type="video")), data.prompt_text(row(data_type="image"))
    for prompt, visual in [("no placeholder", video), (video_prompt + "<|video_pad|>", video),
                           (image_prompt, video), (video_prompt, None)]:
        with pytest.raises(ValueError, match="placeholders"):
            data.collate([prompt], [visual], tok)


@pytest.mark.parametrize("height, width, release, plain", [
    (320, 480, (252, 392), (252, 364)),   # CLEVRER's 480x320 videos
    (480, 640, (280, 364), (252, 364))])  # 4:3
def test_training_frames_follow_the_release_cap_rule(tmp_path, height, width, release, plain):
    # qwen-vl-utils 0.0.14 raises the per-frame cap to int(1.05 * floor): with floor = cap =
    # 128*28*28 (the paper's training setting) the cap is 105,369, not 100,352 (numbers from
    # running qwen-vl-utils on such clips)
    assert data.video_pixel_cap(128 * 28 * 28, 128 * 28 * 28, 1.05) == 105369
    path = str(tmp_path / "v.mp4")
    with av.open(path, "w") as c:
        stream = c.add_stream("libx264", rate=2)
        stream.width, stream.height = width, height
        for _ in range(4):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8),
                                                           format="rgb24")))
        c.mux(stream.encode())
    paper = dict(max_frames=16, video_min_pixels=128 * 28 * 28, video_max_pixels=128 * 28 * 28)
    video = {"media": path, "data_type": "video"}
    assert data.load_frames(video, **paper, video_cap_floor_ratio=1.05)[0].shape[2:] == release
    assert data.load_frames(video, **paper)[0].shape[2:] == plain
    # the demo's 112x112 videos at min = max = 112*112 are the same either way; evaluation's cap
    # (256*28*28) is above 1.05x its floor
    cap = data.video_pixel_cap(112 * 112, 112 * 112, 1.05)
    assert data.smart_resize(112, 112, 112 * 112, cap) == (112, 112)
    assert data.video_pixel_cap(128 * 28 * 28, 256 * 28 * 28, 1.05) == 256 * 28 * 28


def test_load_video_matches_decord(video_file):
    import decord
    path = video_file
    frames, second_per_grid_t = data.load_video(path, max_frames=8, min_pixels=56 * 56, max_pixels=56 * 56)
    assert frames.shape == (8, 3, 56, 56) and frames.dtype == torch.float32 and second_per_grid_t == 1.0
    raw = decord.VideoReader(path).get_batch([0, 2, 4, 6, 9, 11, 13, 15]).asnumpy()  # [8,56,56,3]
    torch.testing.assert_close(frames, torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)
    big, spg = data.load_video(path, max_frames=4, min_pixels=112 * 112, max_pixels=112 * 112)
    assert big.shape == (4, 3, 112, 112) and spg == 2.0  # 4 frames over 4 s: 1 fps, 2 s per patch
    assert data.load_video(path, max_pixels=56 * 56)[0].shape == (8, 3, 56, 56)  # not raised to the default min
    # the resize is torchvision's tensor arithmetic (what qwen-vl-utils runs): float32 bicubic with
    # antialiasing, clamped and rounded once; torch's uint8 kernel differs by up to 14 grey levels
    raw = decord.VideoReader(path).get_batch([0, 5, 10, 15]).asnumpy()  # [4,56,56,3]
    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float()                 # [4,3,56,56]
    float_path = torch.nn.functional.interpolate(x, size=(112, 112), mode="bicubic", antialias=True)
    assert torch.equal(big, float_path.clamp(0, 255).round() / 255)
    # and stays within one grey level of PIL's (the image path, the HF oracle)
    pil = np.stack([np.asarray(Image.fromarray(f).resize((112, 112), Image.BICUBIC)) for f in raw])
    pil = torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255  # [4,3,112,112]
    torch.testing.assert_close(big, pil, atol=1 / 255 + 1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(BAD_MEDIA))
def test_every_media_failure_is_a_media_error_naming_the_path(world, tmp_path, kind):
    out, files = world
    video = str(out / next(r["path"] for r in files["rl"] if r["data_type"] == "video"))
    image = str(out / next(r["path"] for r in files["rl"] if r["data_type"] == "image"))
    path = bad_media(tmp_path, video, image)[kind]
    if kind == "damaged frames":  # the hard case: the container opens and has frames; decoding them fails
        import decord
        assert len(decord.VideoReader(path)) == 16
    with pytest.raises(data.MediaError, match=re.escape(path)):
        data.load_frames({"media": path, "data_type": BAD_MEDIA[kind][1]}, **DEMO)


def test_media_error_messages_and_plain_exception_failures(world, tmp_path, monkeypatch):
    out, files = world
    video = str(out / next(r["path"] for r in files["rl"] if r["data_type"] == "video"))
    image = str(out / next(r["path"] for r in files["rl"] if r["data_type"] == "image"))
    paths = bad_media(tmp_path, video, image)
    with pytest.raises(data.MediaError, match="video not found: .*missing.mp4"):
        data.load_video(paths["missing"])
    with pytest.raises(data.MediaError, match="video is an empty file: .*empty.mp4"):
        data.load_video(paths["zero bytes"])
    # decord's own error type is a plain Exception: the reason keeps its name, without C++ source positions
    with pytest.raises(data.MediaError, match=r"cannot decode video .*damaged.mp4: DECORDError: (?!.*\.cc:)"):
        data.load_video(paths["damaged frames"])
    with pytest.raises(data.MediaError, match=r"cannot decode image .*video.png: UnidentifiedImageError"):
        data.load_image(paths["video named .png"])
    with pytest.raises(data.MediaError, match=r"cannot decode image .*truncated.png: OSError: image file is truncated"):
        data.load_image(paths["truncated image"])
    # a video too short to sample (one frame) is the file's fault too
    with av.open(str(tmp_path / "one.mp4"), "w") as c:
        stream = c.add_stream("libx264", rate=4)
        stream.width = stream.height = 56
        c.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((56, 56, 3), np.uint8), format="rgb24")))
        c.mux(stream.encode())
    with pytest.raises(data.MediaError, match="one.mp4: ValueError: need at least 2 frames"):
        data.load_video(str(tmp_path / "one.mp4"))
    # PIL's DecompressionBombError is a plain Exception as well
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(data.MediaError, match="DecompressionBombError"):
        data.load_image(image)


def test_load_image_composites_transparency_on_white(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[:, :14] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    frames = data.load_image(str(tmp_path / "a.png"), 28 * 28, 28 * 28)
    assert frames[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0] and frames[0, :, 0, 27].tolist() == [1.0, 1.0, 1.0]


def test_check_reports_every_bad_row_and_writes_a_clean_copy(world, tmp_path):
    out, _ = world
    kinds_at = {3 * i + 1: kind for i, kind in enumerate(BAD_MEDIA)}  # rows 1, 4, 7, ...: one per failure
    file, bad_paths = dataset_with_bad_media(str(out / "rl.json"), tmp_path, kinds_at)
    rows = json.loads(open(file).read())
    rows[2]["problem_type"] = "mcq"
    del rows[5]["solution"]
    rows = rows[:40]
    with open(file, "w") as f:
        json.dump(rows, f)
    report, clean = tmp_path / "report.tsv", tmp_path / "clean.json"
    cmd = [sys.executable, os.path.join(ROOT, "check_data.py"), file, "--max_frames=8", "--workers=2",
           f"--report={report}", f"--clean={clean}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "40 rows, 10 bad" in proc.stdout and "decoded 38/38 media files" in proc.stderr  # the valid rows
    lines = report.read_text().splitlines()
    assert lines[0] == "file\trow\tfield_or_path\treason"
    got = {int(i): (where, reason) for f, i, where, reason in (l.split("\t") for l in lines[1:])}
    assert sorted(got) == sorted([2, 5, *kinds_at])
    assert got[2] == ("problem_type", "unknown value 'mcq'") and got[5] == ("solution", "missing")
    for i, path in bad_paths.items():
        assert got[i][0] == path and path in got[i][1]  # the path, and a reason that names it
    kept = json.loads(clean.read_text())
    assert kept == [r for i, r in enumerate(rows) if i not in got]
    # the clean copy passes (and is what the run should use)
    items, problems = check_data.check_rows(str(clean), workers=1, progress=False, max_frames=8)
    assert len(items) == 30 and problems == []


def misbehaving_copies(world, folder):
    """A good demo video copied as hang.mp4 and crash.mp4 (see conftest.decode_or_misbehave)."""
    out, files = world
    video = out / next(r["path"] for r in files["rl"] if r["data_type"] == "video")
    for name in ("hang.mp4", "crash.mp4"):
        shutil.copy(video, folder / name)
    return str(video), str(folder / "hang.mp4"), str(folder / "crash.mp4")


def test_a_decode_past_the_deadline_or_a_crashed_decoder_is_bad_media(world, tmp_path, monkeypatch):
    # A decoder that never returns cannot be stopped in a thread: load_frames with a media_timeout
    # runs it in a child process, ends that after the deadline, and the next file decodes as usual.
    good, hang, crash = misbehaving_copies(world, tmp_path)
    video = lambda path: {"media": path, "data_type": "video"}
    expected = data.load_frames(video(good), **DEMO)  # in this thread, no deadline
    monkeypatch.setattr(data, "decode_frames", decode_or_misbehave)
    got = data.load_frames(video(good), **DEMO, media_timeout=30)  # the child starts (not timed)
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    t0 = time.time()
    with pytest.raises(data.MediaError, match=f"hung: decoding {re.escape(hang)} took longer "
                                              f"than media_timeout=2 s"):
        data.load_frames(video(hang), **DEMO, media_timeout=2)
    assert time.time() - t0 < 10  # stopped at the deadline, not at the end of the sleep
    with pytest.raises(data.MediaError, match=f"crashed its process on {re.escape(crash)} "
                                              f"\\(exit code -9\\)"):
        data.load_frames(video(crash), **DEMO, media_timeout=30)
    got = data.load_frames(video(good), **DEMO, media_timeout=30)  # a fresh child
    assert torch.equal(got[0], expected[0])
    with pytest.raises(data.MediaError, match="video not found"):  # errors come back as they are
        data.load_frames(video(str(tmp_path / "missing.mp4")), **DEMO, media_timeout=30)


def test_check_reports_a_hung_and_a_crashing_file_and_goes_on(world, tmp_path, monkeypatch):
    # decord has been seen to hang, segfault and abort on damaged files: the check must survive
    # each, name the file, and finish the others.
    out, files = world
    rows = [dict(r, path=str(out / r["path"])) for r in files["rl"][:12]]
    _, hang, crash = misbehaving_copies(world, tmp_path)
    rows[5].update(path=crash, data_type="video")
    rows[8].update(path=hang, data_type="video")
    (tmp_path / "rl.json").write_text(json.dumps(rows))
    monkeypatch.setattr(data, "decode_frames", decode_or_misbehave)
    items, problems = check_data.check_rows(str(tmp_path / "rl.json"), workers=2, progress=False,
                                            max_frames=8, media_timeout=3)
    assert len(items) == 12 and [(i, p) for i, p, _ in problems] == [(5, crash), (8, hang)]
    assert problems[0][2] == f"the decoder crashed its process on {crash} (exit code -9)"
    assert problems[1][2].startswith(f"hung: decoding {hang} took longer than media_timeout=3 s")


def test_prefetch_gives_the_plain_results_in_order_while_computing_the_next_ahead():
    import threading
    calls, next_started = [], threading.Event()

    def fn(x):
        calls.append((x, threading.get_ident()))
        if x == 1:
            next_started.set()
        return x * x

    got = []
    for k, y in enumerate(data.prefetch(fn, range(5))):
        if k == 0:  # item 1 is being computed while the caller still holds item 0, on another thread
            assert next_started.wait(10)
        assert len(calls) <= k + 2  # never more than one item ahead
        got.append(y)
    assert got == [x * x for x in range(5)] and [x for x, _ in calls] == list(range(5))
    assert len({t for _, t in calls}) == 1 and calls[0][1] != threading.get_ident()


def test_prefetch_raises_at_the_failing_items_turn_and_stops():
    calls = []

    def fn(x):
        calls.append(x)
        if x == 2:
            raise data.MediaError(f"item {x}")
        return x

    got = []
    with pytest.raises(data.MediaError, match="item 2"):
        for y in data.prefetch(fn, range(10)):
            got.append(y)
    assert got == [0, 1] and calls == [0, 1, 2]  # nothing past the failing item
