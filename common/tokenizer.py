"""Text tokenization on the `tokenizers` package alone (no transformers), with `<image>` handling.

A checkpoint's `llm/` holds `tokenizer.json` (the fast-tokenizer format) and
`tokenizer_config.json` (special tokens). Releases that ship only a SentencePiece
`tokenizer.model` are converted once by `vlm_edge.model` (which may use transformers).

Prompt tokenization follows VILA exactly: the prompt is split at each `<image>`, every chunk is
encoded on its own with the tokenizer's special-token template, a leading BOS is kept once, and
each `<image>` becomes IMAGE_TOKEN_INDEX (-200), later replaced by that image's embeddings.
"""

from __future__ import annotations

import functools

from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer

from .errors import CheckpointError
from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, loads_json, read_json
from .templates import ChatTemplate

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Other tokenizer files a release may ship; carried through a load -> save unchanged.
TOKENIZER_SIDE_FILES = ("tokenizer.model", "special_tokens_map.json", "added_tokens.json")


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as strings or AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens of tokenizer_config.json."""

    def __init__(
        self, tokenizer: Tokenizer, config: dict[str, Any] | None = None, side_files: dict[str, bytes] | None = None
    ):
        self.tokenizer = tokenizer
        self.config = dict(config or {})
        self.side_files = dict(side_files or {})  # file name -> bytes, see TOKENIZER_SIDE_FILES
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.pad_token = _token_text(self.config.get("pad_token"))
        self.bos_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self.pad_id = self.token_to_id(self.pad_token) if self.pad_token else None

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The longest vocabulary entry in UTF-8 bytes: a text of B bytes has at least
        B / (this x 4) tokens (x 4: normalization may shorten a text, never by more), a bound
        that refuses an over-long prompt without tokenizing it."""
        return max((len(t.encode("utf-8", "replace")) for t in self.tokenizer.get_vocab()), default=1) or 1

    # ---- files ---------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path) -> "TextTokenizer":
        """Read a tokenizer folder, which may be untrusted (an engine's): tokenizer.json is
        checked (read_tokenizer_json) before the `tokenizers` package sees it."""
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the runtime needs the fast-tokenizer JSON")
        text = read_tokenizer_json(path)
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises plain Exceptions with Rust messages
            reason = next(iter(str(e).splitlines()), "")[:300]
            raise CheckpointError(f"{path} is not a valid tokenizer.json ({reason})") from None
        return cls(tokenizer, read_tokenizer_config(directory), read_side_files(directory))

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json into `directory` (atomically, per file)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / TOKENIZER_FILE, self.tokenizer.to_str())
        atomic_write_json(directory / TOKENIZER_CONFIG_FILE, self.config)
        for name, data in self.side_files.items():
            atomic_write_bytes(directory / name, data)

    # ---- text ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids if i >= 0], skip_special_tokens=skip_special_tokens)

    def tokenize_prompt(self, prompt: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a rendered prompt; each `<image>` becomes IMAGE_TOKEN_INDEX.

        `add_special_tokens=False` encodes a continuation (no BOS), e.g. a later turn in training.
        """
        chunks = [self.encode(chunk, add_special_tokens=add_special_tokens) for chunk in prompt.split(IMAGE_TOKEN)]
        keep_bos = bool(chunks[0]) and self.bos_id is not None and chunks[0][0] == self.bos_id
        offset = 1 if keep_bos else 0
        ids: list[int] = [self.bos_id] if keep_bos else []  # type: ignore[list-item]
        for i, chunk in enumerate(chunks):
            if i > 0:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[offset:] if chunk[:offset] == [self.bos_id] * offset else chunk)
        return ids

    def stop_token_ids(self, template: ChatTemplate, extra: Iterable[int] = ()) -> list[int]:
        """EOS plus every template stop string that is a single token in this vocabulary."""
        ids = [] if self.eos_id is None else [self.eos_id]
        for text in template.stop_strings:
            token_id = self.token_to_id(text)
            if token_id is not None:
                ids.append(token_id)
        ids.extend(int(i) for i in extra)
        return sorted(set(ids))


# Bounds for tokenizer files that may be untrusted, far above real tokenizers' (Qwen2's tokenizer.json
# is ~7 MB with 22 added tokens, Llama-3's ~9 MB with 256). The `tokenizers` package builds a matcher
# over the added tokens that takes ~70 bytes of memory per byte of their text: 150 MB of added tokens
# got a process killed by the kernel; the bounds below keep it under ~100 MB.
MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json and each side file
MAX_ADDED_TOKENS = 65536
MAX_ADDED_TOKEN_TEXT = 1 << 20  # the added tokens' text, in UTF-8 bytes, all together


def _size_checked(path: Path, what: str) -> int:
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{what} {path} is {size >> 20} MiB, over the {MAX_TOKENIZER_BYTES >> 20} MiB a tokenizer "
                              "file may be here (real ones are a few MB); replace it with the model's own tokenizer")
    return size


def read_tokenizer_json(path: Path) -> str:
    """tokenizer.json's text, after checks that keep a hostile file from exhausting memory: its size,
    its JSON nesting (common/fsutil.loads_json), and the count and total length of its added tokens."""
    _size_checked(path, "tokenizer")
    data = path.read_bytes()
    obj = loads_json(data, what=f"tokenizer {path}", error=CheckpointError)
    added = obj.get("added_tokens") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not isinstance(added, (list, type(None))):
        raise CheckpointError(f"{path} is not a valid tokenizer.json (not an object with an added_tokens list); "
                              "replace it with the model's own tokenizer")
    added = added or []
    text = sum(len(str(t.get("content", "")).encode("utf-8", "replace")) if isinstance(t, dict) else 0 for t in added)
    if len(added) > MAX_ADDED_TOKENS or text > MAX_ADDED_TOKEN_TEXT:
        raise CheckpointError(f"{path} has {len(added)} added tokens ({text >> 10} KiB of text), over the "
                              f"{MAX_ADDED_TOKENS} tokens and {MAX_ADDED_TOKEN_TEXT >> 10} KiB accepted here (real "
                              "tokenizers add a few hundred); replace it with the model's own tokenizer")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # json.loads also takes UTF-16 and UTF-32; tokenizer.json is UTF-8
        raise CheckpointError(f"{path} is not UTF-8 text; replace it with the model's own tokenizer") from None


def read_tokenizer_config(directory: Path) -> dict[str, Any]:
    path = directory / TOKENIZER_CONFIG_FILE
    return read_json(path, what="tokenizer config", error=CheckpointError) if path.is_file() else {}


def read_side_files(directory: Path) -> dict[str, bytes]:
    files = {}
    for name in TOKENIZER_SIDE_FILES:
        path = directory / name
        if path.is_file():
            _size_checked(path, "tokenizer file")
            files[name] = path.read_bytes()
    return files


def default_chat_template(tokenizer: TextTokenizer, llm_architecture: str | None = None) -> str:
    """The template a checkpoint that records none most likely uses, judged by its vocabulary.

    Llama-3 vocabularies have <|eot_id|> (llama_3); ChatML ones <|im_start|>: qwen2 for a Qwen2 LLM
    (NVILA), else hermes-2 (VILA1.5-40B); the rest are Llama-2 style (vicuna_v1, VILA1.5-3B's template).
    """
    if tokenizer.token_to_id("<|eot_id|>") is not None:
        return "llama_3"
    if tokenizer.token_to_id("<|im_start|>") is not None:
        return "qwen2" if llm_architecture == "Qwen2ForCausalLM" else "hermes-2"
    return "vicuna_v1"
