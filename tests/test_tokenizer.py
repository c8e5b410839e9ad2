"""Tokenizers: round trips on random text, GPT-2 compatibility, char vocabulary and its errors."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from components.tokenizer import gpt2_encoding
from registry import TOKENIZER, SpecError

# Code point ranges a random string draws from: ASCII, whitespace, accented Latin, Greek, CJK,
# combining marks and astral emoji (four UTF-8 bytes); no surrogates, which UTF-8 cannot hold.
RANGES = [(0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x17F), (0x370, 0x3FF), (0x4E00, 0x4FFF),
          (0x300, 0x36F), (0x1F300, 0x1F64F)]
PIECES = ["<|endoftext|>", "'s", "'ll", " 2024", "  \n\n", "\r\n", "don't", "\u00e9t\u00e9", "\U0001F600"]


def random_text(rng: random.Random, max_len: int = 40) -> str:
    parts = []
    for _ in range(rng.randint(0, max_len)):
        if rng.random() < 0.1:
            parts.append(rng.choice(PIECES))
        else:
            low, high = rng.choice(RANGES)
            parts.append(chr(rng.randint(low, high)))
    return "".join(parts)


@pytest.fixture(scope="module")
def corpus_text() -> str:
    from experiments.data import Embedded
    return Embedded().read().decode("utf-8")


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_round_trip_random_text(name: str) -> None:
    tokenizer = TOKENIZER.build(name)
    rng = random.Random(f"round-trip-{name}")
    lengths = tokenizer.token_bytes()
    for _ in range(300):
        text = random_text(rng)
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.encode_array(text).tolist() == ids
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # exact byte counts per split


def test_char_round_trip_on_corpus_strings(corpus_text: str) -> None:
    tokenizer = TOKENIZER.build("char", {"text": corpus_text})
    rng = random.Random("round-trip-char")
    alphabet = sorted(set(corpus_text))
    lengths = tokenizer.token_bytes()
    for _ in range(300):
        start = rng.randrange(len(corpus_text))
        for text in (corpus_text[start:start + rng.randint(0, 200)],
                     "".join(rng.choices(alphabet, k=rng.randint(0, 50)))):
            ids = tokenizer.encode(text)
            assert tokenizer.decode(ids) == text
            assert tokenizer.encode_array(text).tolist() == ids
            assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert tokenizer.decode(tokenizer.encode_array(corpus_text).tolist()) == corpus_text


def test_char_vocabulary_is_the_sorted_characters_and_its_spec_rebuilds_it(corpus_text: str) -> None:
    tokenizer = TOKENIZER.build("char", {"text": "hello, world"})
    assert tokenizer.vocab == " ,dehlorw" and tokenizer.vocab_size == 9
    assert tokenizer.encode("hello") == [4, 3, 5, 5, 6]
    spec = json.loads(json.dumps(tokenizer.spec()))
    rebuilt = TOKENIZER.build(spec, {"text": ""})
    assert rebuilt.vocab == tokenizer.vocab and rebuilt.encode("world") == tokenizer.encode("world")


@pytest.mark.parametrize("name", ["char", "byte", "gpt2"])
def test_every_tokenizer_has_the_common_interface(name: str) -> None:
    tokenizer = TOKENIZER.build(name, {"text": "abc"})
    assert tokenizer.name == name
    assert isinstance(tokenizer.vocab_size, int)
    spec = tokenizer.spec()
    assert spec["name"] == name and json.loads(json.dumps(spec)) == spec
    assert TOKENIZER.build(spec, {"text": ""}).spec() == spec
    assert len(tokenizer.token_bytes()) == tokenizer.vocab_size
    assert TOKENIZER.describe(name).startswith(f"{name} — ")


def test_char_unseen_character_is_named() -> None:
    tokenizer = TOKENIZER.build("char", {"text": "abc"})
    for encode in (tokenizer.encode, tokenizer.encode_array):
        with pytest.raises(SpecError) as error:
            encode("abcab\u00e9")
        message = str(error.value)
        assert "'\u00e9'" in message and "U+00E9" in message and "position 5" in message


def test_char_needs_a_vocabulary() -> None:
    with pytest.raises(SpecError, match="empty vocabulary"):
        TOKENIZER.build("char", {"text": ""})
    with pytest.raises(SpecError, match="repeats"):
        TOKENIZER.build({"name": "char", "vocab": "abca"}, {"text": ""})


def test_char_with_a_user_given_unsorted_vocab_encodes_by_position() -> None:
    tokenizer = TOKENIZER.build({"name": "char", "vocab": "cab"}, {"text": ""})
    assert tokenizer.encode("abc") == [1, 2, 0]
    assert tokenizer.encode_array("abc").tolist() == [1, 2, 0]


def test_gpt2_matches_openai() -> None:
    tokenizer = TOKENIZER.build("gpt2")
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.vocab_size == 50257 == gpt2_encoding().n_vocab
    assert tokenizer.decode([50256]) == "<|endoftext|>"
    # Text that spells the special token is ordinary text, so a corpus round-trips.
    assert 50256 not in tokenizer.encode("a<|endoftext|>b")
    assert tokenizer.encode(" the cat's") == [262, 3797, 338]


def test_byte_tokenizer_ids_are_utf8_bytes() -> None:
    tokenizer = TOKENIZER.build("byte")
    assert tokenizer.vocab_size == 256
    assert tokenizer.encode("é!") == [0xC3, 0xA9, 0x21]
    assert tokenizer.decode([0xC3]) == "\ufffd"  # a sample cut inside a character still decodes
    assert tokenizer.encode_array("é!").dtype == np.uint8


def test_unknown_tokenizer_suggests_a_close_name() -> None:
    with pytest.raises(SpecError, match="did you mean 'gpt2'"):
        TOKENIZER.build("gtp2")


def test_building_gpt2_loads_nothing() -> None:
    code = ("import sys, components.tokenizer as t; t.TOKENIZER.build('gpt2').spec(); "
            "print(sorted({'tiktoken', 'numpy', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
