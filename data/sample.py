"""The bundled sample with images: small PNG files drawn from each row's labels, written on demand.

The sample (``data/sample/sample.parquet`` = ``retrieve synth --preset small --seed 0``) has no
images of its own: it is synthetic. So that a first report shows image tiles, ``install_sample``
copies it into a folder with a ``path`` column (``images/<id>.png``, relative to the file) and
draws one 64 × 128 PNG per row: a figure whose shirt and trouser colours belong to the identity,
on a background tinted by the camera, shifted by a per-image pose; distractors (pid 0) get random
colours, junk (pid -1) a partial, faded figure, as a failed detection would be. Nothing is
committed but the code: about 2,300 files are written in a second or two, into a staging folder
renamed into place (``retrieval.common.atomic``; not fsynced file by file: they are drawn again
whenever the sample is installed).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa

from retrieval.common.atomic import staging_folder
from retrieval.data import SAMPLE_EMBEDDINGS
from retrieval.data.writer import write_parquet_atomically

IMAGE_WIDTH, IMAGE_HEIGHT = 32, 64
IMAGES_FOLDER = "images"


def _colour(rng: np.random.Generator, low: int = 30, high: int = 230) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


def sample_image(pid: int, camid: int, row: int) -> bytes:
    """A deterministic PNG of one row: identity colours, camera background, per-image pose."""
    from PIL import Image, ImageDraw

    identity = np.random.default_rng([7, pid]) if pid > 0 else np.random.default_rng([8, row])
    shirt, trousers = _colour(identity), _colour(identity)
    skin = (224, 182, 150) if identity.random() < 0.5 else (150, 105, 80)
    camera = np.random.default_rng([9, camid])
    background = _colour(camera, 170, 250)
    pose = np.random.default_rng([10, row])
    dx, dy = (int(v) for v in pose.integers(-3, 4, size=2))
    image = Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT), background)
    draw = ImageDraw.Draw(image)
    cx = IMAGE_WIDTH // 2 + dx
    draw.ellipse((cx - 5, 4 + dy, cx + 5, 14 + dy), fill=skin)
    draw.rectangle((cx - 8, 15 + dy, cx + 8, 37 + dy), fill=shirt)
    draw.rectangle((cx - 7, 38 + dy, cx - 1, 60 + dy), fill=trousers)
    draw.rectangle((cx + 1, 38 + dy, cx + 7, 60 + dy), fill=trousers)
    if pid < 0:  # junk: a failed detection, half a figure washed out
        image = Image.blend(image, Image.new("RGB", image.size, background), 0.6)
        image = image.crop((0, 0, IMAGE_WIDTH, IMAGE_HEIGHT // 2)).resize(image.size)
    image = image.resize((2 * IMAGE_WIDTH, 2 * IMAGE_HEIGHT), Image.NEAREST)  # the report's tile size
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def install_sample(folder: Path | str, *, overwrite: bool = True) -> Path:
    """Write ``folder/embeddings.parquet`` (the sample plus a ``path`` column) and its images.

    Returns the embeddings file. The images folder is written first, so the file never names
    images that are not there yet."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    table = pq.read_table(SAMPLE_EMBEDDINGS)
    ids = table.column("id").to_pylist()
    pid = table.column("pid").to_numpy()
    camid = table.column("camid").to_numpy()
    with staging_folder(folder / IMAGES_FOLDER, overwrite=overwrite, durable=False) as staging:
        for row, (item, p, c) in enumerate(zip(ids, pid.tolist(), camid.tolist())):
            (staging / f"{item}.png").write_bytes(sample_image(int(p), int(c), row))
    paths = pa.array([f"{IMAGES_FOLDER}/{item}.png" for item in ids], pa.string())
    if "path" in table.column_names:
        table = table.drop_columns(["path"])
    table = table.append_column("path", paths).replace_schema_metadata(table.schema.metadata)
    return write_parquet_atomically(table, folder / "embeddings.parquet", overwrite=overwrite)
