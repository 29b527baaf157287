"""Conversation data in the LLaVA / VILA JSON format, checked record by record.

    [{"image": "a.jpg" | ["a.jpg", "b.jpg"],
      "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}]

Used for users' training data (`vlm-train --data`) and calibration sets (`vlm-quant --calib`).
A broken record stops loading with its index and what is wrong; nothing is skipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .fsutil import loads_json
from .tokenizer import IMAGE_TOKEN


@dataclass
class Conversation:
    images: list[Path]  # in placeholder order
    messages: list[dict[str, str]]  # {"role": "user" | "assistant", "content": ...}, alternating


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def read_conversations(path: str | Path, image_folder: str | Path | None = None) -> list[Conversation]:
    """Read a LLaVA-format JSON list: {"image": str | [str], "conversations": [{"from", "value"}]}.

    Every record is checked; the first broken one stops loading with its index and what is wrong.
    Images are paths relative to `image_folder` (default: the JSON's folder); they are checked to
    exist here and opened by whoever uses them.
    """
    path = Path(path)
    folder = Path(image_folder) if image_folder is not None else path.parent
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist") from None
    records = loads_json(data, what=f"data file {path}", error=InputError)  # malformed, not UTF-8, over-nested
    if not isinstance(records, list):
        raise InputError(f"data file {path} must hold a JSON list of records")
    return [_conversation(record, i, path, folder) for i, record in enumerate(records)]


def _conversation(record: Any, index: int, path: Path, folder: Path) -> Conversation:
    def bad(why: str) -> InputError:
        return InputError(f"{path}: record {index}: {why}")

    if not isinstance(record, dict):
        raise bad("must be a JSON object")
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise bad("'image' must be a file name or a list of file names")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise bad("'conversations' must be a non-empty list")
    messages = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise bad(f"turn {t} must be an object with a string 'value'")
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise bad(f"turn {t}: 'from' must be one of {', '.join(_ROLES)}, got {turn.get('from')!r}")
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise bad(f"turn {t}: expected a {expected} turn; turns alternate, starting with the human")
        messages.append({"role": role, "content": turn["value"]})
    if messages[-1]["role"] != "assistant":
        raise bad("the last turn must be the assistant's answer")
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if images and placeholders == 0 and len(images) == 1:
        messages[0]["content"] = f"{IMAGE_TOKEN}\n{messages[0]['content']}"  # LLaVA convention
        placeholders = 1
    if placeholders != len(images):
        raise bad(f"{placeholders} {IMAGE_TOKEN} placeholder(s) but {len(images)} image(s)")
    loaded = []
    for name in images:
        image_path = folder / name
        if not image_path.is_file():
            raise bad(f"image {image_path} does not exist")
        loaded.append(image_path)
    return Conversation(loaded, messages)
