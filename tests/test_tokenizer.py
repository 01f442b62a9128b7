import pytest

from pixdeploy.config import SPECIAL_TOKENS
from pixdeploy.errors import PixdeployError
from pixdeploy.tokenizer import Tokenizer


def corpus():
    from pydoc_data.topics import topics  # a real English corpus that ships with Python

    return list(topics.values())[:60]


def test_bpe_has_the_special_tokens_at_fixed_ids_and_round_trips(tmp_path):
    tok = Tokenizer.train(corpus(), 800)
    assert tok.vocab_size == 800
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok._tok.token_to_id(name) == i
    text = "The assert statement is a convenient way to insert debugging assertions."
    ids = tok.encode(text)
    assert min(ids) >= len(SPECIAL_TOKENS) and len(ids) < len(text) / 2
    assert tok.decode(ids) == text
    tok.save(tmp_path / "tok.json")
    again = Tokenizer.load(tmp_path / "tok.json")
    assert again.encode(text) == ids


def test_image_only_tokenizer_is_the_special_tokens():
    tok = Tokenizer.image_only()
    assert tok.vocab_size == len(SPECIAL_TOKENS)


def test_foreign_or_broken_tokenizer_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PixdeployError, match="invalid tokenizer"):
        Tokenizer.load(tmp_path / "bad.json")
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    HF(models.WordLevel({"<s>": 0, "<unk>": 1}, unk_token="<unk>")).save(str(tmp_path / "other.json"))
    with pytest.raises(PixdeployError, match="special token <unk> at id 0"):
        Tokenizer.load(tmp_path / "other.json")
