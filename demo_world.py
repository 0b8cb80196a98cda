"""
The demo world: short videos and images of coloured squares, with questions of all five problem
types in the Video-R1 row schema, and the perception warm-up that stands in for Qwen2.5-VL's
pretraining. Demo only: data.py holds what a real dataset goes through.

    python demo_world.py demo/world --n_rl=2000 --n_cot=352 --n_eval=400 --n_warmup=4000

Why it looks like this (a 64-wide, 2-layer model has to learn it on a CPU in minutes):
- Frames are 112x112: 4x4 merged tokens of 28x28 pixels. A square fills most of a quadrant
  (2x2 tokens), so every token of it shows one colour.
- Videos are 4 s at 4 fps: four 1-second "moments" of 4 identical frames. Sampled at 2 fps
  (max_frames=8) a moment is exactly one 2-frame temporal patch, so the model sees one scene per
  patch, and a frame-level shuffle (T-GRPO's shuffled rollouts) mixes scenes inside patches.
- Multiple-choice options are listed in a fixed order per family (like a benchmark with a fixed
  label set), so a letter names a class; every class is equally common, so a constant letter scores
  1/4.

Families (data_source "demo/<family>"), dealt round robin so each is balanced:
  order-dependent videos: order (MC: which colour comes first), sequence (free-form: the colours in
    order), direction (MC: which way the square jumps; the deliberate single-frame shortcut: in 3 of
    4 videos the colour tells the direction, so one frame scores 75%, the order 100%);
  order-free video: count (numerical);
  images: colour (MC), ocr (OCR, two letters), area (regression: % of the grid filled), describe
    (free-form).
Held-out rows (eval_demo.json) come from another random stream; warmup.json asks short questions
about what is where and when (plain prompts, answer-only targets), never the families' questions.
"""
import json
import os

import av
import numpy as np
from PIL import Image

SIZE = 112                        # frame side: 4x4 merged tokens of 28 px
FPS, MOMENTS, FRAMES_PER_MOMENT = 4, 4, 4   # 4 s videos; one moment = one temporal patch at 2 fps
# dark grey, so a black frame from a decoding bug is not mistaken for it
BACKGROUND = 20
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
NAMES = tuple(COLOURS)
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # index = 2 * row + column
SQUARE = 44                       # px, centred in its 56 px quadrant
DIRECTIONS = ("left", "right", "up", "down")
# the direction shortcut
USUAL_COLOUR = {"left": "green", "right": "red", "up": "blue", "down": "yellow"}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")
GLYPHS = {  # 3x5 blocky letters, drawn with 14 px blocks (42x70 px): legible without a font file
    "A": "111101111101101", "C": "111100100100111", "E": "111100111100111", "H": "101101111101101",
    "L": "100100100100111", "O": "111101101101111", "T": "111010010010010", "U": "101101101101111"}
ORDER_DEPENDENT = ("order", "sequence", "direction")


def canvas(n):
    return np.full((n, SIZE, SIZE, 3), BACKGROUND, np.uint8)  # [n, H, W, 3]


def draw_square(frames, quadrant, colour, size=SQUARE):
    y, x = 56 * (quadrant // 2) + (56 - size) // 2, 56 * (quadrant % 2) + (56 - size) // 2
    frames[:, y:y + size, x:x + size] = COLOURS[colour]


def video(scenes):
    """Four scenes (lists of (quadrant, colour)), one per 1 s moment -> frames [16, H, W, 3]."""
    frames = canvas(MOMENTS * FRAMES_PER_MOMENT)
    for m, scene in enumerate(scenes):
        for quadrant, colour in scene:
            draw_square(frames[m * FRAMES_PER_MOMENT:(m + 1) * FRAMES_PER_MOMENT], quadrant, colour)
    return frames


def options(choices, answer):
    """Fixed-order options and the answer's letter: (["A. red", ...], "A")."""
    return [f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices)], "ABCD"[choices.index(answer)]


def listing(words):
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def caption(scene):
    """[(0, "red"), (3, "blue")] -> "a red square at the top left and a blue square at the bottom right"."""
    return listing([f"a {c} square at the {QUADRANTS[q]}" for q, c in sorted(scene)]) if scene else "nothing"


def neighbour(quadrant, direction):
    row, col = divmod(quadrant, 2)
    row, col = {"left": (row, col - 1), "right": (row, col + 1), "up": (row - 1, col), "down": (row + 1, col)}[direction]
    return 2 * row + col if 0 <= row < 2 and 0 <= col < 2 else None


# Each family: (rng, k = instance number within the family) ->
# (frames uint8 [F, H, W, 3], problem, problem_type, options, answer, reasoning)

def _order(rng, k):
    a = NAMES[k % 4]
    b = str(rng.choice([c for c in NAMES if c != a]))
    # a for moments [0, switch), then b: durations do not tell
    switch = int(rng.integers(1, MOMENTS))
    qa, qb = (int(q) for q in rng.permutation(4)[:2])  # and neither do the places
    frames = video([[(qa, a)]] * switch + [[(qb, b)]] * (MOMENTS - switch))
    opts, letter = options(NAMES, a)
    think = f"First: {caption([(qa, a)])}. Last: {caption([(qb, b)])}. So {a} is first."
    return frames, "Which colour of square appears first in the video?", "multiple choice", opts, letter, think


def _sequence(rng, k):
    colours = [str(c) for c in rng.permutation(NAMES)[:3]]
    quadrants = [int(q) for q in rng.permutation(4)[:3]]
    runs = [1, 1, 1]
    runs[int(rng.integers(3))] += 1  # 4 moments in 3 runs
    frames = video([[(q, c)] for q, c, n in zip(quadrants, colours, runs) for _ in range(n)])
    answer = ", ".join(colours)
    think = f"First: a {colours[0]} square. Next: a {colours[1]} square. Last: a {colours[2]} square. In order: {answer}."
    return frames, "Name the colours of the squares in the order they appear.", "free-form", [], answer, think


def _direction(rng, k):
    d = DIRECTIONS[k % 4]
    # 3 of every 4 videos per direction have the direction's usual colour
    shortcut = (k // 4) % 4 != 3
    colour = USUAL_COLOUR[d] if shortcut else str(rng.choice([c for c in NAMES if c != USUAL_COLOUR[d]]))
    start = int(rng.choice([q for q in range(4) if neighbour(q, d) is not None]))
    end, switch = neighbour(start, d), int(rng.integers(1, MOMENTS))
    frames = video([[(start, colour)]] * switch + [[(end, colour)]] * (MOMENTS - switch))
    opts, letter = options(DIRECTIONS, d)
    think = f"First: {caption([(start, colour)])}. Last: {caption([(end, colour)])}. So it moves {d}."
    return frames, "In which direction does the square move?", "multiple choice", opts, letter, think


def _count(rng, k):
    n = 1 + k % 4
    scene = list(zip((int(q) for q in rng.permutation(4)[:n]), (str(c) for c in rng.choice(NAMES, n))))
    frames = video([scene] * MOMENTS)
    think = f"First and last: {caption(scene)}. So there {'is' if n == 1 else 'are'} {n}."
    return frames, "How many squares are in the video?", "numerical", [], str(n), think


def _colour(rng, k):
    colour, quadrant = NAMES[k % 4], int(rng.integers(4))
    image = canvas(1)
    draw_square(image, quadrant, colour, size=int(rng.integers(32, 53)))
    opts, letter = options(NAMES, colour)
    think = f"I see {caption([(quadrant, colour)])}. So it is {colour}."
    return image, "What colour is the square in the image?", "multiple choice", opts, letter, think


def draw_letters(image, word):
    for i, letter in enumerate(word):
        for j in [j for j, bit in enumerate(GLYPHS[letter]) if bit == "1"]:
            # 14 px blocks: each ViT patch is on or off
            y, x = 14 + 14 * (j // 3), 56 * i + 14 * (j % 3)
            image[0, y:y + 14, x:x + 14] = 235


def _ocr(rng, k):
    word = "".join(str(c) for c in rng.choice(list(GLYPHS), 2))
    image = canvas(1)
    draw_letters(image, word)
    think = f"Left: {word[0]}. Right: {word[1]}. So it reads {word}."
    return image, "What text is written in the image?", "OCR", [], word, think


def draw_cells(image, cells, colour):
    for cell in cells:  # cells of the 4x4 grid: one merged token each
        y, x = 28 * (cell // 4), 28 * (cell % 4)
        image[0, y:y + 28, x:x + 28] = COLOURS[colour]


def cells_text(n, colour):
    return f"{n} {colour} cell{'s' * (n > 1)}"


def _area(rng, k):
    n, colour = 1 + k % 8, str(rng.choice(NAMES))
    image = canvas(1)
    draw_cells(image, rng.permutation(16)[:n], colour)
    percent = f"{100 * n / 16:g}"
    think = f"I see {cells_text(n, colour)} of 16. {n} of 16 is {percent} percent."
    return image, "What percentage of the image is coloured?", "regression", [], percent, think


def _describe(rng, k):
    n, colour = 1 + k % 3, str(rng.choice(NAMES))
    scene = [(int(q), colour) for q in rng.permutation(4)[:n]]
    image = canvas(1)
    for q, c in scene:
        draw_square(image, q, c)
    answer = f"{NUMBER_WORDS[n]} {colour} square{'s' * (n > 1)}"
    think = f"I see {caption(scene)}. So: {answer}."
    return image, "Describe the image in a few words.", "free-form", [], answer, think


VIDEO_FAMILIES = {"order": _order, "sequence": _sequence, "direction": _direction, "count": _count}
IMAGE_FAMILIES = {"colour": _colour, "ocr": _ocr, "area": _area, "describe": _describe}


def _warmup_video(rng):
    """1-3 squares, each on screen for its own time span, some jumping to a neighbouring quadrant on
    the way, and one short question about what is seen first, last, or which comes first ->
    (frames, question, answer)."""
    n = int(rng.integers(1, 4))
    colours, quadrants = [str(c) for c in rng.permutation(NAMES)[:n]], [int(q) for q in rng.permutation(4)[:n]]
    # [from, to)
    spans = [sorted(int(s) for s in rng.choice(MOMENTS + 1, 2, replace=False)) for _ in range(n)]
    spans[0][0], spans[-1][1] = 0, MOMENTS  # something is on screen at the start and at the end
    places = []  # per square and moment: its quadrant
    for q, (a, b) in zip(quadrants, spans):
        free = [p for d in DIRECTIONS if (p := neighbour(q, d)) is not None and p not in quadrants]
        jump = int(rng.integers(a + 1, b)) if b - a > 1 and free and rng.random() < 0.5 else MOMENTS
        places.append([q if m < jump else int(rng.choice(free)) for m in range(MOMENTS)])
    scenes = [[(places[i][m], colours[i]) for i in range(n) if spans[i][0] <= m < spans[i][1]]
              for m in range(MOMENTS)]
    starts = [a for a, _ in spans]
    later = [(i, j) for i in range(n) for j in range(n) if starts[i] < starts[j]]
    kind = int(rng.integers(4))
    if kind == 2 and later:
        i, j = (int(x) for x in later[int(rng.integers(len(later)))])
        pair = [colours[i], colours[j]] if rng.random() < 0.5 else [colours[j], colours[i]]
        return (video(scenes), f"Which comes first, the {pair[0]} square or the {pair[1]} square?",
                f"the {colours[i]} square")
    nexts = {i: [j for a, j in later if a == i and starts[j] == min(starts[k] for a, k in later if a == i)]
             for i, _ in later}
    # the square that shows up next, if one
    nexts = {i: js[0] for i, js in nexts.items() if len(js) == 1}
    if kind == 3 and nexts:
        i = int(rng.choice(sorted(nexts)))
        return video(scenes), f"What comes after the {colours[i]} square?", f"a {colours[nexts[i]]} square"
    if kind == 1:
        return video(scenes), "What do you see last?", caption(scenes[-1])
    return video(scenes), "What do you see first?", caption(scenes[0])


def _warmup_image(rng):
    image, kind = canvas(1), int(rng.integers(3))
    if kind == 0:  # squares
        n = int(rng.integers(0, 5))
        scene = list(zip((int(q) for q in rng.permutation(4)[:n]), (str(c) for c in rng.choice(NAMES, n))))
        for q, c in scene:
            draw_square(image, q, c, size=int(rng.integers(32, 53)))
        return image, "Describe the picture.", caption(scene)
    if kind == 1:  # letters
        word = "".join(str(c) for c in rng.choice(list(GLYPHS), 2))
        draw_letters(image, word)
        side = int(rng.integers(2))
        return image, f"Which letter is on the {('left', 'right')[side]}?", word[side]
    n, colour = int(rng.integers(1, 9)), str(rng.choice(NAMES))  # grid cells
    draw_cells(image, rng.permutation(16)[:n], colour)
    return image, "How many cells are coloured?", cells_text(n, colour)


def write_video(path, frames):
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        # near-lossless, deterministic
        stream.options = {"crf": "12", "preset": "ultrafast", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _save(out_dir, rel, media):
    if len(media) > 1:
        write_video(os.path.join(out_dir, rel), media)
    else:
        Image.fromarray(media[0]).save(os.path.join(out_dir, rel))


def _split(out_dir, split, rng, n):
    """n questions, half videos and half images, families dealt round robin; k counts within a family."""
    rows = []
    for modality, families, count in [("video", VIDEO_FAMILIES, (n + 1) // 2), ("image", IMAGE_FAMILIES, n // 2)]:
        for j in range(count):
            family = list(families)[j % len(families)]
            media, problem, problem_type, opts, answer, think = families[family](rng, j // len(families))
            rel = f"./{modality}s/{split}_{j:05d}.{'mp4' if modality == 'video' else 'png'}"
            _save(out_dir, rel, media)
            rows.append({"problem": problem, "data_type": modality, "problem_type": problem_type,
                         "options": opts, "process": f"<think>{think}</think>",
                         "solution": f"<answer>{answer}</answer>", "path": rel, "data_source": f"demo/{family}"})
    # mix videos and images, so a limit sees both
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return [{"problem_id": i, **row} for i, row in enumerate(rows)]


def _warmup(out_dir, rng, n):
    rows = []
    for j in range(n):
        modality = ("video", "image")[j % 2]
        media, question, answer = (_warmup_video if modality == "video" else _warmup_image)(rng)
        rel = f"./{modality}s/warmup_{j:05d}.{'mp4' if modality == 'video' else 'png'}"
        _save(out_dir, rel, media)
        rows.append({"problem_id": j, "problem": question, "data_type": modality, "problem_type": "free-form",
                     "options": [], "solution": f"<answer>{answer}</answer>", "path": rel,
                     "data_source": f"warmup/{modality}"})
    return rows


def make_demo_world(out_dir, seed=0, n_rl=2000, n_cot=352, n_eval=400, n_warmup=4000):
    """Write videos/, images/ and rl.json (n_rl questions), cot.json (the first n_cot of them with a
    `process`, as COT-165k is a subset of the 260k), eval_demo.json (n_eval held-out questions from
    another random stream) and warmup.json (n_warmup perception questions, media of their own).
    Same arguments -> identical files. Returns {"rl": rows, "cot": rows, "eval_demo": rows,
    "warmup": rows}."""
    if n_cot > n_rl:
        raise ValueError(f"n_cot={n_cot} must not exceed n_rl={n_rl}: the COT rows are a subset of the RL rows")
    for sub in ("videos", "images"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    train = _split(out_dir, "train", np.random.default_rng([seed, 0]), n_rl)
    held_out = _split(out_dir, "eval", np.random.default_rng([seed, 1]), n_eval)
    warmup = _warmup(out_dir, np.random.default_rng([seed, 2]), n_warmup)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "process"} for row in rows]
    files = {"rl": strip(train), "cot": train[:n_cot], "eval_demo": strip(held_out), "warmup": warmup}
    for name, rows in files.items():
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return files


def demo_texts(out_dir):
    """Every text the demo's tokenizer should know: prompts in all templates, processes, solutions, options."""
    import data
    texts = []
    for name in ("rl", "cot", "eval_demo", "warmup"):
        for row in data.load_rows(os.path.join(out_dir, f"{name}.json")):
            texts += [data.prompt_text(row, t) for t in data.TEMPLATES] + [row["solution"], *row["options"]]
            texts += [row["process"]] if "process" in row else []
    return texts


if __name__ == "__main__":
    import sys
    out = sys.argv[1]
    kwargs = {k: int(v) for k, v in (a[2:].split("=") for a in sys.argv[2:])}
    files = make_demo_world(out, **kwargs)
    print(out, {name: len(rows) for name, rows in files.items()})
