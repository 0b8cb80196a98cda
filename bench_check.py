"""
bench_check.py: how fast is the dataset check (`python data.py check`) on realistic video? Run by hand.

    python bench_check.py                 # 10 s, 30 fps H.264 videos at 640x360 and 1280x720, 2 workers
    python bench_check.py --workers=8     # more decoding processes on a bigger machine

Writes `copies` copies of one synthetic video per size into a temporary folder (a textured image panning
like a camera, x264 veryfast crf 23: about 1.2 and 2.9 Mbit/s), a dataset file with one row per copy, and
times data.check_rows with the paper's training frame settings (16 frames, 128*28*28 pixels per frame).
Copies, not one path repeated: the check decodes each distinct file once.
"""
import json
import os
import shutil
import tempfile
import time

import av
import numpy as np

import data
from configurator import configure

sizes = [(640, 360), (1280, 720)]  # width, height
seconds = 10
video_fps = 30
copies = 32               # rows (distinct files) per size
workers = 2               # decoding processes
configure(globals())


def write_video(path, width, height):
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height + 64, width + 2 * video_fps * seconds, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=video_fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for f in range(seconds * video_fps):
            frame = np.ascontiguousarray(texture[f % 64:f % 64 + height, 2 * f:2 * f + width])  # [H, W, 3]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            first = os.path.join(tmp, f"{height}p_0.mp4")
            write_video(first, width, height)
            for i in range(1, copies):
                shutil.copy(first, os.path.join(tmp, f"{height}p_{i}.mp4"))
            rows = [{"problem_id": i, "problem": "What happens?", "data_type": "video", "problem_type": "free-form",
                     "solution": "<answer>it pans</answer>", "path": f"./{height}p_{i}.mp4", "data_source": "bench"}
                    for i in range(copies)]
            file = os.path.join(tmp, f"{height}p.json")
            with open(file, "w") as f:
                json.dump(rows, f)
            t0 = time.time()
            _, problems = data.check_rows(file, workers=workers, progress=False)
            seconds_taken = time.time() - t0
            mbit = os.path.getsize(first) * 8 / seconds / 1e6
            print(f"{width}x{height} ({mbit:.1f} Mbit/s): {copies} rows in {seconds_taken:.1f} s = "
                  f"{copies / seconds_taken:.1f} rows/s with {workers} workers, {len(problems)} bad")
