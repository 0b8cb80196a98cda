"""Data for Video-R1: rows, prompts, Qwen2.5-VL vision preprocessing, batching.

    rows = load_rows("demo/rl.json")                       # validated dicts + row["media"] (absolute path)
    frames, spg = load_frames(rows[0])                      # [T,3,H,W] in [0,1]; seconds per 2-frame patch
    visual = make_visual(frames, spg)                        # pixel_values [N,1176], grid_thw (t,h,w)
    batch = collate([prompt_text(rows[0])], [visual], tok)   # left-padded ids with the pad token expanded

Vision follows the model family's conventions (families.py; Qwen2.5-VL's are SPEC 1.3): sides are
multiples of 28 (Qwen3-VL: 32), 14x14 (16x16) patches, two frames per temporal patch, 2x2 patches
merged into one LLM token, so a visual costs t*h*w/4 tokens. Every function that depends on the
family takes `family` (default Qwen2.5-VL); a visual dict records its family's name, and the model
checks it.
Resizing is bicubic with antialiasing, as in qwen-vl-utils 0.0.14 (which the release used): images
with PIL (bit-exact with the Hugging Face PIL image processor); videos with torch in float32, clamped
to [0, 255] and rounded once, the arithmetic of torchvision's tensor resize that qwen-vl-utils calls
(an independent check found this path bit-identical to qwen-vl-utils on real clips; torch's uint8
kernel, used before, was up to 11-14 grey levels off on single pixels, mean 0.1-0.2). Its cost:
0.12 s vs 0.05 s for 16 frames 640x360 -> 448x252 on one CPU thread, hidden by data.prefetch.
"""
import itertools
import json
import math
import multiprocessing.connection
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import decord
import numpy as np
import torch
from PIL import Image

import families
from families import MERGE_SIZE, QWEN2_5_VL, TEMPORAL_PATCH_SIZE

VIDEO_MIN_PIXELS = 128 * 28 * 28   # qwen-vl-utils default: small videos are scaled up to this
SYSTEM_PROMPT = QWEN2_5_VL.system_prompt  # "You are a helpful assistant." (SPEC 1.2)
VISION_PAD = {"video": "<|video_pad|>", "image": "<|image_pad|>"}
DATA_TYPES = ("image", "video")

# Interface facts: the released checkpoints were trained on exactly these strings (SPEC 1.2).
QUESTION_TEMPLATE = "{Question}\nPlease think about this question as if you were a human pondering deeply. Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other natural language thought expressions It's encouraged to include self-reflection or verification in the reasoning process. Provide your detailed reasoning between the <think> </think> tags, and then give your final answer between the <answer> </answer> tags."
TYPE_TEMPLATE = {
  "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
  "numerical":       " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
  "OCR":             " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
  "free-form":       " Please provide your text answer within the <answer> </answer> tags.",
  "regression":      " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}
PROBLEM_TYPES = tuple(TYPE_TEMPLATE)
TEMPLATES = ("train", "eval", "plain")
# The release's evaluation script words the last sentence slightly differently.
QUESTION_TEMPLATE_EVAL = QUESTION_TEMPLATE.replace(
    "between the <think> </think> tags, and then give your final answer between the <answer> </answer> tags.",
    "between the <think> and </think> tags, and then give your final answer between the <answer> and </answer> tags.")


def check_row(row, where, require_process):
    """Raise ValueError("<where>: field 'x': ...") for the first problem found in one row."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not an object but {type(row).__name__}")
    def bad(field, msg):
        raise ValueError(f"{where}: field '{field}': {msg}")
    for field, kind in [("problem_id", int), ("problem", str), ("data_type", str), ("problem_type", str),
                        ("solution", str), ("path", str), ("data_source", str)]:
        if field not in row:
            bad(field, "missing")
        if not isinstance(row[field], kind) or isinstance(row[field], bool):
            bad(field, f"expected {kind.__name__}, got {type(row[field]).__name__}")
    if row["data_type"] not in DATA_TYPES:
        bad("data_type", f"unknown value {row['data_type']!r}")
    if row["problem_type"] not in PROBLEM_TYPES:
        bad("problem_type", f"unknown value {row['problem_type']!r}")
    options = row.get("options")
    if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
        bad("options", "expected a list of str")
    if row["problem_type"] == "multiple choice" and not options:
        bad("options", "multiple choice needs a non-empty list of options")
    if not ("<answer>" in row["solution"] and "</answer>" in row["solution"].split("<answer>", 1)[1]):
        bad("solution", f"no <answer>...</answer> in {row['solution'][:60]!r}")
    if not row["path"]:
        bad("path", "empty")
    if require_process:
        process = row.get("process")
        if not isinstance(process, str) or "<think>" not in process or "</think>" not in process:
            bad("process", "expected a str with <think>...</think>")


def load_rows(path, data_root=None, data_types=None, problem_types=None, limit=None, require_process=False):
    """Read a dataset file (one JSON list, SPEC 1.1), validate, filter, and attach absolute media paths.

    Rows are scanned in file order and each scanned row is validated; scanning stops once `limit`
    matching rows are found, so a bad row past that point is never seen.
    E.g. a row {"path": "./videos/v1.mp4", ...} in /d/rl.json gets row["media"] = "/d/videos/v1.mp4".
    """
    for name, wanted, known in [("data_types", data_types, DATA_TYPES),
                                ("problem_types", problem_types, PROBLEM_TYPES)]:
        if wanted is not None and not set(wanted) <= set(known):
            raise ValueError(f"{name}: unknown values {sorted(set(wanted) - set(known))}, known: {known}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path} not found (for the CPU demo, `python demo.py assets` "
                                f"builds demo/ first)")
    try:
        with open(path) as f:
            items = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(items).__name__}")
    root = os.path.dirname(os.path.abspath(path)) if data_root is None else os.path.abspath(data_root)
    rows = []
    for i, row in enumerate(items):
        if limit is not None and len(rows) >= limit:
            break
        check_row(row, f"{path}: row {i}", require_process)
        if data_types is not None and row["data_type"] not in data_types:
            continue
        if problem_types is not None and row["problem_type"] not in problem_types:
            continue
        rows.append(dict(row, media=media_path(row["path"], root)))
    return rows


def media_path(path, root):
    """A row's `path` ("./videos/v1.mp4", relative to the dataset root; absolute paths stay) -> a file path."""
    return os.path.join(root, path[2:] if path.startswith("./") else path)


def question_text(row):
    """problem, plus the options for multiple choice: "Which way?" -> "Which way?Options:\\nA. left\\nB. right\\n"
    (no separator before "Options:", as in the release)."""
    if row["problem_type"] == "multiple choice":
        return row["problem"] + "Options:\n" + "".join(o + "\n" for o in row["options"])
    return row["problem"]


def prompt_text(row, template="train", family=QWEN2_5_VL):
    """The full ChatML prompt: system turn, user turn (vision pad first, then text), open assistant turn.
    template: "train" (SPEC 1.2), "eval" (the release's evaluation wording) or "plain" (the question
    alone, as in instruction tuning: the demo's perception warm-up). The system turn is the one the
    family's chat template adds by default (Qwen3-VL: none)."""
    if template == "plain":
        user = question_text(row)
    else:
        question_template = {"train": QUESTION_TEMPLATE, "eval": QUESTION_TEMPLATE_EVAL}[template]
        user = question_template.format(Question=question_text(row)) + TYPE_TEMPLATE[row["problem_type"]]
    pad = VISION_PAD[row["data_type"]]
    system = family.system_prompt and f"<|im_start|>system\n{family.system_prompt}<|im_end|>\n"
    return (f"{system}<|im_start|>user\n"
            f"<|vision_start|>{pad}<|vision_end|>{user}<|im_end|>\n<|im_start|>assistant\n")


def sft_target(row):
    """process + "\\n" + solution, e.g. "<think>It moves right.</think>\\n<answer>B</answer>".
    The caller appends <|im_end|>, so the model learns to stop."""
    return row["process"] + "\n" + row["solution"]


def after_prefill(target, prefill):
    """An assistant turn's text as it follows the prompt's prefill (families.assistant_prefill:
    "<think>\\n" for Qwen3.5, whose prompt opens the think block): the reasoning without its
    opening tag, or, for a target without reasoning (the warm-up's bare answers), the empty think
    block that Qwen3.5 writes when it does not think. Without a prefill the target is unchanged.

    >>> after_prefill("<think>It moves right.</think>\\n<answer>B</answer>", "<think>\\n")
    'It moves right.</think>\\n<answer>B</answer>'
    >>> after_prefill("B", "<think>\\n"), after_prefill("B", "")
    ('\\n</think>\\n\\nB', 'B')
    """
    if not prefill:
        return target
    if target.startswith("<think>"):
        return target[len("<think>"):].lstrip("\n")
    return "\n</think>\n\n" + target


def smart_resize(height, width, min_pixels, max_pixels, factor=QWEN2_5_VL.factor):
    """Sides rounded to multiples of `factor`, aspect kept, area scaled into [min_pixels, max_pixels].

    smart_resize(1080, 1920, 4*28*28, 128*28*28) -> (224, 420); smart_resize(10, 10, 56*56, 10**6) -> (56, 56)
    """
    if max(height, width) / min(height, width) > 200:  # as HF: such slivers are almost surely a bug
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def video_frame_indices(total_frames, video_fps, max_frames, fps=2.0, min_frames=4):
    """Frames to decode: duration*fps clipped to [min_frames, max_frames] and to the video, rounded down to even.

    A 4 s clip at 4 fps (16 frames), max_frames=8: n = 8 -> [0, 2, 4, 6, 9, 11, 13, 15].
    A 1 s clip at 30 fps: n = 2 -> raised to 4 -> [0, 10, 19, 29].
    """
    n = total_frames / video_fps * fps
    n = min(max(n, min_frames), max_frames, total_frames)
    n = int(n // TEMPORAL_PATCH_SIZE) * TEMPORAL_PATCH_SIZE
    if n < TEMPORAL_PATCH_SIZE:
        raise ValueError(f"need at least {TEMPORAL_PATCH_SIZE} frames, the video has {total_frames}")
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


class MediaError(ValueError):
    """A media file that cannot be used (missing, empty, damaged, not what its row says); the message names
    the path. Training skips such a row and replaces it, evaluation records it; neither stops."""


def _reason(e):
    """One readable line from a decoder error: decord prefixes its messages with C++ source positions."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(e))
    return f"{type(e).__name__}: {' '.join(text.split())}"


def _check_file(path, kind):
    if not os.path.isfile(path):
        raise MediaError(f"{kind} not found: {path}")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{kind} is an empty file: {path}")


def video_pixel_cap(min_pixels, max_pixels, cap_floor_ratio=None):
    """The per-frame pixel cap a video is resized under: max_pixels, or with a cap_floor_ratio at
    least int(cap_floor_ratio * min_pixels). qwen-vl-utils 0.0.14 (the release) does this with
    1.05, so with floor = cap = 128*28*28 its cap is 105,369, and a 480x320 video trains at 252x392
    rather than 252x364.
    >>> video_pixel_cap(100352, 100352, 1.05), video_pixel_cap(100352, 3136)
    (105369, 3136)"""
    if cap_floor_ratio is None:
        return max_pixels
    return max(max_pixels, int(min_pixels * cap_floor_ratio))


def load_video(path, max_frames=16, fps=2.0, min_pixels=VIDEO_MIN_PIXELS, max_pixels=128 * 28 * 28,
               family=QWEN2_5_VL, cap_floor_ratio=None):
    """Decode the frames picked by video_frame_indices -> (frames [T,3,H,W] in [0,1], time).

    time, in the family's form: Qwen2.5-VL second_per_grid_t = seconds covered by one 2-frame patch
    (a 4 s clip sampled at 8 frames -> 2/(8/4) = 1.0); Qwen3-VL the list of each sampled frame's
    time in seconds, frame index / the video's fps (the processor's rule; timestamps come from it).
    The cap is video_pixel_cap(min_pixels, max_pixels, cap_floor_ratio). A cap below min_pixels
    wins: load_video(p, max_pixels=56*56) gives 56x56 frames, not upscaled ones.
    Raises MediaError for a missing, empty, damaged or too short file.
    """
    max_pixels = video_pixel_cap(min_pixels, max_pixels, cap_floor_ratio)
    min_pixels = min(min_pixels, max_pixels)
    _check_file(path, "video")
    try:
        vr = decord.VideoReader(path)
        total, native_fps = len(vr), vr.get_avg_fps()
        if not native_fps > 0:
            raise ValueError(f"bad frame rate {native_fps}")
        indices = video_frame_indices(total, native_fps, max_frames, fps)
        frames = vr.get_batch(indices).asnumpy()  # [T,H,W,3] uint8
        h, w = smart_resize(frames.shape[1], frames.shape[2], min_pixels, max_pixels, family.factor)
    # Whatever fails here is the file's fault: decord raises RuntimeError when it cannot open a file and
    # DECORDError (a plain Exception) when the metadata or frame data are damaged; video_frame_indices and
    # smart_resize raise ValueError for a video too short or too thin to use.
    except Exception as e:
        raise MediaError(f"cannot decode video {path}: {_reason(e)}") from e
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T,3,H,W] in 0..255
    if (h, w) != frames.shape[2:]:  # torchvision's tensor resize (qwen-vl-utils): float, then rounded
        frames = torch.nn.functional.interpolate(frames, size=(h, w), mode="bicubic", antialias=True)
        frames = frames.clamp(0, 255).round()                                             # [T,3,h,w]
    if family.timestamps:
        return frames / 255, [i / native_fps for i in indices]
    effective_fps = len(frames) / (total / native_fps)
    return frames / 255, TEMPORAL_PATCH_SIZE / effective_fps


def load_image(path, min_pixels=4 * 28 * 28, max_pixels=256 * 28 * 28, family=QWEN2_5_VL):
    """Read an image as RGB (transparency composited on white) -> frames [1,3,H,W] in [0,1].
    Raises MediaError for a missing, empty or damaged file, or one that is not an image."""
    _check_file(path, "image")
    try:
        with Image.open(path) as img:
            if img.mode in ("RGBA", "LA") or "transparency" in img.info:
                img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
            img = img.convert("RGB")
            h, w = smart_resize(img.height, img.width, min_pixels, max_pixels, family.factor)
            pixels = np.array(img.resize((w, h), Image.BICUBIC))  # [h,w,3] uint8; no-op when the size is right
    # PIL raises UnidentifiedImageError (an OSError) for what it cannot open, OSError for truncated or damaged
    # pixel data, DecompressionBombError (a plain Exception) for huge images, and more from its plugins;
    # smart_resize ValueError for a sliver. All are the file's fault.
    except Exception as e:
        raise MediaError(f"cannot decode image {path}: {_reason(e)}") from e
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255  # [1,3,h,w]


def patchify(frames, family=QWEN2_5_VL):
    """frames [T,3,H,W] in [0,1] -> (pixel_values [t*h*w, 3*2*p*p], grid_thw LongTensor (t, h, w)).

    Normalises with the family's statistics (p = its patch size: 14, Qwen3-VL 16), then orders
    patches as the HF Qwen2-VL processor: temporal patch, then 2x2 merge windows
    row-major, then the 4 patches inside a window. An 8x3x56x56 video -> grid (4,4,4), 64 patches, 16 tokens.
    An odd T repeats the last frame (a single image becomes two identical frames).
    """
    T, C, H, W = frames.shape
    if C != 3 or H % family.factor or W % family.factor:
        raise ValueError(f"frames must be [T,3,H,W] with H, W multiples of {family.factor}, "
                         f"got {tuple(frames.shape)}")
    if T % TEMPORAL_PATCH_SIZE:
        frames = torch.cat([frames, frames[-1:].expand(TEMPORAL_PATCH_SIZE - T % TEMPORAL_PATCH_SIZE, -1, -1, -1)])
    mean = torch.tensor(family.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(family.image_std).view(1, 3, 1, 1)
    x = (frames.float() - mean) / std                                    # [T,3,H,W]
    p = family.patch_size
    t, h, w = x.shape[0] // TEMPORAL_PATCH_SIZE, H // p, W // p
    m = MERGE_SIZE
    x = x.reshape(t, TEMPORAL_PATCH_SIZE, 3, h // m, m, p, w // m, m, p)  # [t,2,C,h/m,m,p,w/m,m,p]
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)                            # [t,h/m,w/m,m,m,C,2,p,p]
    pixel_values = x.reshape(t * h * w, 3 * TEMPORAL_PATCH_SIZE * p * p)  # [N,1176] (Qwen3-VL 1536)
    return pixel_values, torch.tensor([t, h, w])


def shuffle_frames(frames, generator, level="frame"):
    """Permute frames [T,3,H,W] along time for the T-GRPO shuffled rollouts (SPEC 1.4).

    level="frame": each frame moves on its own, so a 2-frame patch may pair unrelated frames (the release).
    level="patch": whole 2-frame groups move, so every patch stays intact.
    The permutation is redrawn while it is the identity (a "shuffled" video in its true order would teach
    nothing), so a 2-frame video is always reversed; one frame / one group cannot be shuffled and is returned.
    """
    return frames[shuffle_order(len(frames), generator, level).to(frames.device)]


def shuffle_video(frames, time, generator, level="frame", timestamps="keep"):
    """T-GRPO's shuffled copy of a video: (frames permuted by shuffle_order, its time).

    Qwen2.5-VL's time (seconds per patch) is the same for every patch: nothing to move. Qwen3-VL's
    time is one number per frame, from which each temporal patch's text timestamp is made:
    timestamps="keep" leaves them in order (the prompt differs from the ordered one only in its
    visual features, as on Qwen2.5-VL); "follow" moves each frame's time with the frame, so a
    patch's timestamp becomes the mean of its two frames' original times (after a frame-level
    shuffle two unrelated frames: frames 7 and 2 at 2 fps -> "<2.2 seconds>", a time neither had).
    """
    if timestamps not in ("keep", "follow"):
        raise ValueError(f"shuffle_timestamps must be 'keep' or 'follow', got {timestamps!r}")
    order = shuffle_order(len(frames), generator, level)  # [T]
    if timestamps == "follow" and isinstance(time, list):
        time = [time[i] for i in order.tolist()]
    return frames[order.to(frames.device)], time


def shuffle_order(T, generator, level="frame"):
    """The frame order [T] shuffle_frames applies (what a caller needs to move frame times too)."""
    unit = {"frame": 1, "patch": TEMPORAL_PATCH_SIZE}[level]
    if T % unit:
        raise ValueError(f"patch-level shuffle needs an even number of frames, got {T}")
    n = T // unit
    perm = torch.randperm(n, generator=generator)
    while n > 1 and torch.equal(perm, torch.arange(n)):
        perm = torch.randperm(n, generator=generator)
    return (perm[:, None] * unit + torch.arange(unit)).flatten()  # [T] frame order


def decode_frames(row, max_frames=16, fps=2.0, video_min_pixels=VIDEO_MIN_PIXELS,
                  video_max_pixels=128 * 28 * 28, image_min_pixels=4 * 28 * 28,
                  image_max_pixels=256 * 28 * 28, video_cap_floor_ratio=None, family=QWEN2_5_VL):
    """Frames of a loaded row, decoded in this thread -> (frames [T,3,H,W], the video's time
    (load_video) or None for images). Raises MediaError (naming the file) when they cannot be used."""
    if row["data_type"] == "video":
        return load_video(row["media"], max_frames, fps, video_min_pixels, video_max_pixels, family,
                          video_cap_floor_ratio)
    return load_image(row["media"], image_min_pixels, image_max_pixels, family), None


def load_frames(row, max_frames=16, fps=2.0, video_min_pixels=VIDEO_MIN_PIXELS,
                video_max_pixels=128 * 28 * 28, image_min_pixels=4 * 28 * 28,
                image_max_pixels=256 * 28 * 28, video_cap_floor_ratio=None,
                media_timeout=None, family=QWEN2_5_VL):
    """decode_frames, with a deadline when media_timeout (seconds) is set: the decode then runs in
    this thread's DecodeProcess, and a file that takes longer is a MediaError starting "hung:"
    (training replaces the row, evaluation records an error, check_data reports it). None: decode
    in this thread, no deadline."""
    settings = dict(max_frames=max_frames, fps=fps, video_min_pixels=video_min_pixels,
                    video_max_pixels=video_max_pixels, image_min_pixels=image_min_pixels,
                    image_max_pixels=image_max_pixels,
                    video_cap_floor_ratio=video_cap_floor_ratio, family=family)
    if media_timeout is None:
        return decode_frames(row, **settings)
    if not hasattr(_decoders, "this_thread"):
        _decoders.this_thread = DecodeProcess()
    return _decoders.this_thread(row, settings, media_timeout)


class DecodeProcess:
    """decode_frames in a child process that can be ended: the deadline on one media file.

    A thread stuck inside decord cannot be stopped (and on 8 GPUs every other rank would wait for
    it in the next collective); a process can be killed. So each decoding thread (the prefetch
    thread, check_data's workers) hands its files to its own child, `python data.py`, waits at most
    `timeout` seconds for the frames, and on a timeout kills the child; a fresh one starts with the
    next file, and its start-up is not counted in the deadline. The child is a plain new
    interpreter (no fork: safe beside threads and CUDA; it does not import the main script, as a
    multiprocessing child would) with the parent's sys.path and torch thread count. The frames come
    back pickled through a socket, one copy: bench.py --parts=deadline measures the cost. A child
    that dies on a file (decord has been seen to segfault) is a MediaError as well.
    threads: the child's torch threads (None: the parent's). quiet: the child writes nothing to
    stderr (decord and ffmpeg complain about every damaged file).
    """

    def __init__(self, threads=None, quiet=False):
        self.threads, self.quiet, self.proc, self.conn = threads, quiet, None, None

    def start(self):
        ours, theirs = socket.socketpair()
        self.conn = multiprocessing.connection.Connection(ours.detach())
        fd = theirs.detach()
        threads = self.threads or torch.get_num_threads()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(fd),
                                      str(threads), str(int(self.quiet))], pass_fds=[fd])
        os.close(fd)
        weakref.finalize(self, self.proc.kill)
        self.conn.send_bytes(pickle.dumps(sys.path))
        if self.conn.recv_bytes() != b"ready":  # EOFError if it died starting: not a media error
            raise RuntimeError("the decode process did not start")

    def stop(self):
        """Kill the child (if still running); returns its exit code."""
        self.proc.kill()
        code = self.proc.wait()
        self.conn.close()
        self.proc = self.conn = None
        return code

    def __call__(self, row, settings, timeout):
        """decode_frames(row, **settings) in the child, within `timeout` seconds."""
        if self.proc is None:
            self.start()
        # decode_frames is looked up now, so a test's monkeypatch (a module-level function) applies
        self.conn.send_bytes(pickle.dumps((decode_frames, row, settings)))
        if not self.conn.poll(timeout):
            self.stop()
            raise MediaError(f"hung: decoding {row['media']} took longer than media_timeout="
                             f"{timeout} s; its decode process was ended")
        try:
            ok, result = pickle.loads(self.conn.recv_bytes())
        except EOFError:
            raise MediaError(f"the decoder crashed its process on {row['media']} "
                             f"(exit code {self.stop()})") from None
        if not ok:
            raise result
        return result


_decoders = threading.local()  # .this_thread: the DecodeProcess of each thread that decodes


def _serve(fd, threads, quiet):
    """The child of a DecodeProcess: (fn, row, settings) in, (True, frames) or (False, error) out.
    """
    conn = multiprocessing.connection.Connection(fd)
    sys.path[:] = pickle.loads(conn.recv_bytes())
    torch.set_num_threads(threads)
    if quiet:
        decord.logging.set_level(decord.logging.QUIET)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    conn.send_bytes(b"ready")
    while True:
        try:
            fn, row, settings = pickle.loads(conn.recv_bytes())
        except EOFError:  # the parent has gone
            return
        try:
            result = pickle.dumps((True, fn(row, **settings)))
        except Exception as e:  # MediaError, or a bug: raised again in the parent
            try:
                result = pickle.dumps((False, e))
            except Exception:  # an error that does not pickle
                result = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
        conn.send_bytes(result)


MEDIA_KEYS = ("max_frames", "fps", "video_min_pixels", "video_max_pixels", "image_min_pixels",
              "image_max_pixels", "video_cap_floor_ratio", "media_timeout")


def media_settings(config, family=QWEN2_5_VL):
    """load_frames' keywords out of a script's config and the model's family:
    data.load_frames(row, **media_settings(config, family)). A media dict without "family" means
    Qwen2.5-VL, load_frames' default: make_visual(frames, time, media.get("family", QWEN2_5_VL))."""
    return {**{k: config[k] for k in MEDIA_KEYS}, "family": family}


def make_visual(frames, time, family=QWEN2_5_VL):
    """The visual dict the model consumes; kind is "image" when time is None, else time is
    load_video's.
    Qwen3-VL videos get "timestamps": one per temporal patch (families.patch_timestamps)."""
    pixel_values, grid_thw = patchify(frames, family)
    visual = {"kind": "image" if time is None else "video", "family": family.name,
              "pixel_values": pixel_values, "grid_thw": grid_thw, "second_per_grid_t": time}
    if family.timestamps and time is not None:
        if len(time) != len(frames):
            raise ValueError(f"{len(time)} frame times for {len(frames)} frames")
        visual |= {"second_per_grid_t": None, "timestamps": families.patch_timestamps(time)}
    return visual


def collate(prompts, visuals, tokenizer):
    """Tokenise prompts, expand each vision pad to grid_thw.prod() // 4 copies, left-pad into a batch.

    A video of grid (4,4,4) turns its one <|video_pad|> into 16 (Qwen3-VL: into 4 timestamped groups
    of 4, families.video_text). Left padding keeps every prompt's last token in the last column,
    where generation continues.
    -> {"input_ids": [B,L], "attention_mask": [B,L], "visuals": visuals}
    """
    pad_ids = {kind: tokenizer.convert_tokens_to_ids(tok) for kind, tok in VISION_PAD.items()}
    if tokenizer.pad_token_id is None or any(i is None or i == tokenizer.unk_token_id for i in pad_ids.values()):
        raise ValueError("tokenizer needs a pad token and the tokens <|video_pad|> and <|image_pad|>")
    seqs = []
    prefill = getattr(tokenizer, "assistant_prefill", "")  # Qwen3.5: "<think>\n" (model.load_model)
    for b, (prompt, visual) in enumerate(zip(prompts, visuals, strict=True)):
        prompt += prefill
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        counts = {kind: ids.count(i) for kind, i in pad_ids.items()}
        want = {kind: int(visual is not None and visual["kind"] == kind) for kind in pad_ids}
        if counts != want:
            raise ValueError(f"prompt {b}: expected placeholders {want} for a {visual and visual['kind']} input, "
                             f"found {counts}")
        timestamped = visual is not None and visual["kind"] == "video" and \
            families.of(visual["family"]).timestamps
        if timestamped:
            ids = tokenizer.encode(expand_video(prompt, visual, b), add_special_tokens=False)
        elif visual is not None:
            i = ids.index(pad_ids[visual["kind"]])
            n = int(visual["grid_thw"].prod()) // MERGE_SIZE**2
            ids = ids[:i] + [pad_ids[visual["kind"]]] * n + ids[i + 1:]
        seqs.append(ids)
    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), tokenizer.pad_token_id, dtype=torch.long)  # [B,L]
    attention_mask = torch.zeros(len(seqs), L, dtype=torch.long)                     # [B,L]
    for b, s in enumerate(seqs):
        input_ids[b, L - len(s):] = torch.tensor(s)
        attention_mask[b, L - len(s):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "visuals": list(visuals)}


def prompt_length(prompt, visual, tokenizer):
    """Tokens of a prompt once collate has expanded its vision pad (Qwen3-VL: timestamps too)."""
    return int(collate([prompt], [visual], tokenizer)["attention_mask"].sum())


def expand_video(prompt, visual, b):
    """The prompt with its "<|vision_start|><|video_pad|><|vision_end|>" replaced by
    families.video_text."""
    placeholder = "<|vision_start|>" + VISION_PAD["video"] + "<|vision_end|>"
    if prompt.count(placeholder) != 1:
        raise ValueError(f"prompt {b}: expected one {placeholder!r}")
    return prompt.replace(placeholder, families.video_text(families.of(visual["family"]), visual,
                                                           VISION_PAD["video"]))


def prefetch(fn, items):
    """Yield fn(item) for each item, in order, while one background thread already computes fn of the next
    item: the next step's media decode while the model works on this one. fn runs item after item on that
    thread, so the results, and the exception fn raises (at its item's turn), are exactly those of
    `for item in items: yield fn(item)`. A thread rather than a process: decord and torch release the GIL while
    they work, and fn may be any closure, its tensors need no copying and its exceptions come as they are (a
    background process measured about as fast: bench.py --parts=prefetch). Torch ops there use the process's
    thread count (1 on the demo and under `accelerate launch`); with a media_timeout, load_frames hands each
    decode on to this thread's DecodeProcess. fn must not run collectives or touch the GPU:
    the caller moves tensors to the device.
    """
    items = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = [pool.submit(fn, item) for item in itertools.islice(items, 1)]
        while pending:
            result = pending.pop().result()
            pending = [pool.submit(fn, item) for item in itertools.islice(items, 1)]
            yield result


if __name__ == "__main__":  # the child of a DecodeProcess: python data.py FD THREADS QUIET
    _serve(*map(int, sys.argv[1:4]))
