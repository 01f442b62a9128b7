"""Word tokenizer: byte-level BPE from the `tokenizers` library, with the paper's special tokens at
fixed ids (<unk>=0, <s>=1, </s>=2, <pad>=3, <|image|>=4, <|/image|>=5). Torch-free: the runtime uses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from pixdeploy.config import SPECIAL_TOKENS
from pixdeploy.errors import PixdeployError


class Tokenizer:
    def __init__(self, tok: HFTokenizer):
        for i, name in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(name) != i:
                raise PixdeployError(f"tokenizer does not have special token {name} at id {i}")
        self._tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
        tok = HFTokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),  # in order: ids 0..5
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def image_only(cls) -> Tokenizer:
        """Image-only pretraining: the word vocabulary is the special tokens alone."""
        return cls(HFTokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL_TOKENS)}, unk_token="<unk>")))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        from pixdeploy.text import utf8_problem

        if not isinstance(text, str):
            raise PixdeployError(f"text to encode must be a string, got {type(text).__name__}")
        problem = utf8_problem(text)
        if problem is not None:  # the library would raise a TypeError on it
            raise PixdeployError(f"the text {problem}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size], skip_special_tokens=True)

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        try:
            json.loads(text)
            return cls(HFTokenizer.from_str(text))
        except (ValueError, Exception) as e:  # tokenizers raises plain Exception on malformed JSON
            if isinstance(e, PixdeployError):
                raise
            raise PixdeployError(f"invalid tokenizer file: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        p = Path(path)
        if not p.is_file():
            raise PixdeployError(f"tokenizer not found: {p}")
        return cls.from_json(p.read_text(encoding="utf-8"))
