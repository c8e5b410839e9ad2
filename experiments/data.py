"""Data: corpus -> train | test | val texts (split by bytes) -> tokenizer -> cached token array -> batches.

Corpora are CORPUS variants (`embedded`, `shakespeare`) or paths to UTF-8 text files. A corpus is
split by bytes, whatever the tokenizer: the validation text is its last val_fraction, the test text
(test_fraction, often none) the bytes just before it, and each text is tokenized on its own, so no
token spans two of them. That is done once per (corpus sha256, tokenizer spec, split) into the cache
folder: $LAB_CACHE_DIR, else $XDG_CACHE_HOME/gpt2-ablation-lab (default ~/.cache/gpt2-ablation-lab).
Later loads memory-map it.

    python -m experiments.data --corpus data.txt --tokenizer gpt2      # how many tokens is my data?

numpy and torch are imported inside the functions that use them, so that command stays fast on a
cache hit: it reads the corpus (for its sha256) and a small JSON, nothing more.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments import interrupts

from components.tokenizer import Tokenizer
from experiments.files import atomic_write, not_a_file
from experiments.schema import DATA, EVAL_ROWS
from registry import CORPUS, TOKENIZER, SpecError

if TYPE_CHECKING:
    import numpy as np
    import torch

CACHE_FORMAT = 2  # bump when the files of a cache entry change meaning (2: texts split by bytes, tokenized apart)


def cache_dir() -> Path:
    if os.environ.get("LAB_CACHE_DIR"):
        return Path(os.environ["LAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "gpt2-ablation-lab"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- corpora -----------------------------------------------------------------------------------
class Corpus:
    """Base: a named source of UTF-8 bytes."""

    name: str

    def read(self) -> bytes:
        raise NotImplementedError


@CORPUS.register("embedded")
class Embedded(Corpus):
    """Python's reference documentation topics (pydoc_data, ~0.45 MB): ships with Python, so works offline."""

    name = "embedded"

    def __init__(self) -> None:
        pass

    def read(self) -> bytes:
        # Topics joined in sorted key order, a blank line between them. The text (and so its sha256,
        # recorded with every run) changes between Python versions.
        from pydoc_data.topics import topics
        return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394


def fetch(url: str, timeout: float = 60.0) -> bytes:
    """The bytes at `url` (a module function so that tests can replace it and stay offline)."""
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@CORPUS.register("shakespeare")
class Shakespeare(Corpus):
    """Tiny Shakespeare (1.1 MB): downloaded once from char-rnn's repository, checked by sha256, cached."""

    name = "shakespeare"

    def __init__(self, *, url: str = SHAKESPEARE_URL) -> None:
        self.url = url

    @staticmethod
    def path() -> Path:
        return cache_dir() / "corpora" / "tinyshakespeare.txt"

    def read(self) -> bytes:
        path = self.path()
        if path.is_file():
            raw = path.read_bytes()
            if sha256(raw) != SHAKESPEARE_SHA256:
                raise SpecError(f"data.corpus 'shakespeare': the copy at {path} has sha256 {sha256(raw)} "
                                f"({len(raw):,} bytes), not {SHAKESPEARE_SHA256} ({SHAKESPEARE_BYTES:,} "
                                "bytes); delete it to download it again, or put the right file there")
            return raw
        try:
            raw = fetch(self.url)
        except Exception as e:  # offline, DNS, HTTP error, timeout: all mean "no copy"
            raise SpecError(
                f"data.corpus 'shakespeare' could not be downloaded from {self.url} ({e}). Without "
                "network, pass the path of a local copy of tiny shakespeare as data.corpus (--corpus "
                f"PATH on the command line), or place the file at {path}, where it is checked "
                f"(sha256 {SHAKESPEARE_SHA256}) and used from then on") from None
        if sha256(raw) != SHAKESPEARE_SHA256:
            raise SpecError(f"data.corpus 'shakespeare': the download from {self.url} has sha256 "
                            f"{sha256(raw)} ({len(raw):,} bytes), not {SHAKESPEARE_SHA256} "
                            f"({SHAKESPEARE_BYTES:,} bytes); it was not saved. Try again later, or pass "
                            "the path of a verified local copy as data.corpus")
        atomic_write(path, lambda f: f.write(raw), mode="wb")
        return raw


class FileCorpus(Corpus):
    """A UTF-8 text file named by its path (the tutorial's data.txt)."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.path = Path(path).expanduser()

    def read(self) -> bytes:
        where = f"data.corpus = {self.name!r}"
        why = not_a_file(self.path)
        if why == "does not exist":
            raise SpecError(f"{where}: no such file ({self.path.absolute()}); give the path of a "
                            f"UTF-8 text file or a corpus name ({', '.join(CORPUS.names())})")
        if why:
            raise SpecError(f"{where} {why}; give the path of one UTF-8 text file")
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise SpecError(f"{where} cannot be read: {e.strerror}") from None


def looks_like_path(corpus: str) -> bool:
    return os.sep in corpus or "/" in corpus or "." in corpus or os.path.exists(corpus)


def open_corpus(corpus: Any) -> Corpus:
    """A registered corpus (a name or {name: ..., option: ...}) or a FileCorpus for a path."""
    name, _ = CORPUS.split(corpus)
    if isinstance(name, str) and name in CORPUS:
        return CORPUS.build(corpus, path="data.corpus")
    if isinstance(corpus, str) and corpus and looks_like_path(corpus):
        return FileCorpus(corpus)
    if not isinstance(name, str) or not name:
        raise SpecError(f"data.corpus = {corpus!r} must be a corpus name ({', '.join(CORPUS.names())}) "
                        "or the path of a UTF-8 text file")
    raise SpecError(CORPUS.unknown(name, "data.corpus") + f"; or give the path of a UTF-8 text file "
                    f"(there is no file {os.path.abspath(name)})")


def decode_corpus(raw: bytes, name: str) -> str:
    where = f"data.corpus = {name!r}"
    if not raw:
        raise SpecError(f"{where} is empty; a corpus needs text to train on")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        raise SpecError(f"{where} is not UTF-8 text: byte 0x{raw[e.start]:02X} at byte offset {e.start:,} "
                        f"(line {line}, column {e.start - line_start + 1}) is {e.reason}; save the file "
                        "as UTF-8 (for example: iconv -f latin1 -t utf-8 in.txt > out.txt)") from None


# -- the texts: train | test | val, split by bytes -------------------------------------------------
PARTS = ("train", "test", "val")  # in the order of the text


def char_boundary(raw: bytes, i: int) -> int:
    """The first UTF-8 character boundary at or after byte i (a continuation byte is 10xxxxxx)."""
    while i < len(raw) and raw[i] & 0xC0 == 0x80:
        i += 1
    return i


def text_ranges(raw: bytes, val_fraction: float, test_fraction: float = 0.0) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the train, test and val texts. The val text is the last
    val_fraction of the bytes, the test text the test_fraction just before it; each start moves
    forward to a character boundary. They depend on the corpus alone, never on the tokenizer, so
    every tokenizer is validated (and tested) on the same text."""
    n = len(raw)
    val_start = char_boundary(raw, n - int(n * val_fraction))
    test_start = char_boundary(raw, val_start - int(n * test_fraction))
    return {"train": (0, test_start), "test": (test_start, val_start), "val": (val_start, n)}


@dataclasses.dataclass(frozen=True)
class Text:
    """One part of a corpus: its bytes [start, end) of `total`, their sha256 and its tokens [first, stop)."""

    start: int
    end: int
    total: int
    sha256: str
    first: int
    stop: int

    @property
    def n_bytes(self) -> int:
        return self.end - self.start

    @property
    def n_tokens(self) -> int:
        return self.stop - self.first

    def describe(self) -> str:
        return f"bytes {self.start}-{self.end} of {self.total}, sha256 {self.sha256}"


def fraction_problems(val_fraction: Any, test_fraction: Any) -> list[str]:
    """The split fields checked against the spec's own rules (experiments/schema.py: one schema)."""
    given = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    return [f"{problem}: {DATA[key].doc}" for key, value in given.items()
            if (problem := DATA[key].problem(value, f"data.{key}"))]


# -- token cache -------------------------------------------------------------------------------
class TokenCache:
    """Token arrays on disk, one entry per (corpus sha256, tokenizer spec, split ranges), built once.

    An entry is `<key>.npy` (the ids of the train, test and val texts, each tokenized on its own and
    then concatenated, uint16 when the vocabulary fits, else uint32), `<key>.token-bytes.npy` (UTF-8
    bytes per id, for exact byte counts) and `<key>.json` (each text's byte range, sha256 and token
    range; written last, so its presence means the arrays are complete).
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "tokens"

    @staticmethod
    def key(corpus_sha256: str, spec: dict[str, Any], ranges: dict[str, tuple[int, int]]) -> str:
        identity = {"format": CACHE_FORMAT, "tokenizer": spec, "ranges": ranges}
        spec_hash = sha256(json.dumps(identity, sort_keys=True).encode())
        return f"{corpus_sha256[:16]}-{spec_hash[:16]}"

    def files(self, key: str) -> tuple[Path, Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.token-bytes.npy", self.root / f"{key}.json"

    def lookup(self, key: str, corpus_sha256: str, spec: dict[str, Any],
               ranges: dict[str, tuple[int, int]]) -> dict[str, Any] | None:
        tokens, lengths, meta_path = self.files(key)
        try:
            meta = json.loads(meta_path.read_bytes())
            complete = tokens.stat().st_size == meta["tokens_file_bytes"] and lengths.is_file()
            same_texts = {p: tuple(meta["texts"][p]["bytes"]) for p in PARTS} == ranges
            complete = complete and all("sha256" in meta["texts"][p] for p in PARTS)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        same = meta.get("corpus_sha256") == corpus_sha256 and meta.get("tokenizer") == spec and same_texts
        return meta if complete and same and meta.get("format") == CACHE_FORMAT else None

    def build(self, key: str, corpus: str, corpus_sha256: str, raw: bytes, ranges: dict[str, tuple[int, int]],
              tokenizer: Tokenizer) -> dict[str, Any]:
        """Tokenize each text on its own (no token spans two texts), check every one covers its bytes."""
        import numpy as np
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        lengths = tokenizer.token_bytes()
        parts, texts, first = [], {}, 0
        for name in PARTS:
            start, end = ranges[name]
            ids = tokenizer.encode_array(raw[start:end].decode("utf-8")).astype(dtype)
            covered = int(lengths[ids].sum(dtype="u8"))
            if covered != end - start:  # every byte count (so bits per byte) rests on this
                raise RuntimeError(f"tokenizer {tokenizer.name}: its tokens of the {name} text cover "
                                   f"{covered} bytes of {end - start}")
            parts.append(ids)
            texts[name] = {"bytes": [start, end], "sha256": sha256(raw[start:end]), "tokens": [first, first + len(ids)]}
            first += len(ids)
        tokens = np.concatenate(parts)
        tokens_path, lengths_path, meta_path = self.files(key)
        atomic_write(tokens_path, lambda f: np.save(f, tokens), mode="wb")
        atomic_write(lengths_path, lambda f: np.save(f, lengths), mode="wb")
        meta = {"format": CACHE_FORMAT, "corpus": corpus, "corpus_sha256": corpus_sha256,
                "tokenizer": tokenizer.spec(), "vocab_size": tokenizer.vocab_size,
                "bytes": len(raw), "tokens": len(tokens), "texts": texts,
                "dtype": np.dtype(dtype).name, "tokens_file_bytes": tokens_path.stat().st_size}
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()), mode="wb")
        return meta


class CacheEntry:
    """A corpus and tokenizer matched with their token cache entry (built if it was missing)."""

    def __init__(self, corpus_name: str, tokenizer: Tokenizer, characters: int, fractions: tuple[float, float],
                 meta: dict[str, Any], files: tuple[Path, Path, Path], hit: bool) -> None:
        self.corpus_name, self.tokenizer, self.characters = corpus_name, tokenizer, characters
        self.val_fraction, self.test_fraction = fractions
        self.meta, self.hit = meta, hit
        self.tokens_path, self.token_bytes_path, self.meta_path = files
        self.texts = {name: Text(*part["bytes"], meta["bytes"], part["sha256"], *part["tokens"])
                      for name, part in meta["texts"].items()}


def prepare(corpus: Any = "embedded", tokenizer: Any = "char", val_fraction: float = 0.1,
            test_fraction: float = 0.0, cache: TokenCache | None = None) -> CacheEntry:
    """Validate everything (reporting every problem at once), then find or build the cache entry."""
    problems = fraction_problems(val_fraction, test_fraction) + TOKENIZER.check(tokenizer, "data.tokenizer")
    try:
        source = open_corpus(corpus)
        raw = source.read()
        text = decode_corpus(raw, source.name)
    except SpecError as e:
        problems += e.problems
    if problems:
        raise SpecError(problems)
    built = TOKENIZER.build(tokenizer, {"text": text}, path="data.tokenizer")
    corpus_sha256, spec, cache = sha256(raw), built.spec(), cache or TokenCache()
    ranges = text_ranges(raw, val_fraction, test_fraction)
    key = cache.key(corpus_sha256, spec, ranges)
    meta = cache.lookup(key, corpus_sha256, spec, ranges)
    hit = meta is not None
    if meta is None:
        meta = cache.build(key, source.name, corpus_sha256, raw, ranges, built)
    return CacheEntry(source.name, built, len(text), (val_fraction, test_fraction), meta, cache.files(key), hit)


# -- dataset -----------------------------------------------------------------------------------
class Dataset:
    """A tokenized corpus in three texts: train, then test (often empty), then val, the last bytes."""

    def __init__(self, entry: CacheEntry) -> None:
        import numpy as np
        self.tokenizer = entry.tokenizer
        self.vocab_size: int = entry.tokenizer.vocab_size
        self.corpus_name, self.corpus_sha256 = entry.corpus_name, entry.meta["corpus_sha256"]
        self.cache_path, self.cache_hit = entry.tokens_path, entry.hit
        self.val_fraction, self.test_fraction, self.meta = entry.val_fraction, entry.test_fraction, entry.meta
        self.texts: dict[str, Text] = entry.texts
        self.tokens = np.load(entry.tokens_path, mmap_mode="r")
        self.token_bytes = np.load(entry.token_bytes_path)  # UTF-8 bytes of each id
        self.train, self.test, self.val = (self.tokens[self.texts[p].first:self.texts[p].stop] for p in PARTS)
        self.split_bytes = {name: text.n_bytes for name, text in self.texts.items()}

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val, "test": self.test}[split_name(name)]

    def scored(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A text's tokens and the UTF-8 bytes of each (what experiments/evaluate.py scores)."""
        import numpy as np
        tokens = np.asarray(self.split(name))
        return tokens, self.token_bytes[tokens]

    def check_context(self, context_length: int) -> None:
        splits = [name for name in SPLITS if name != "test" or self.texts["test"].n_bytes]
        short = [f"the {name} split has {len(self.split(name)):,} tokens" for name in splits
                 if len(self.split(name)) < context_length + 1]
        if short:
            raise SpecError(f"model.context_length = {context_length} is too long for corpus "
                            f"{self.corpus_name!r} with tokenizer {self.tokenizer.name}: "
                            f"{' and '.join(short)}, but a window needs context_length + 1 = "
                            f"{context_length + 1}; use a shorter context, a larger data.val_fraction "
                            "(or data.test_fraction) or a bigger corpus")


def load_dataset(corpus: Any = "embedded", tokenizer: Any = "char", val_fraction: float = 0.1,
                 test_fraction: float = 0.0) -> Dataset:
    """The corpus split into its texts, each tokenized (from the cache when it can be); SpecError on bad input."""
    return Dataset(prepare(corpus, tokenizer, val_fraction, test_fraction))


# -- batches -----------------------------------------------------------------------------------
SPLITS = {"train": 0, "val": 1, "test": 2}  # the split's code in a batch's seed
TRAIN_STREAM, EVAL_STREAM = 0, 1   # training and evaluation batches never share draws


def split_name(name: str) -> str:
    if name not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {name!r}")
    return name


class Batches:
    """Random windows of context_length + 1 tokens; each batch a pure function of (seed, split, step).

    Every batch has its own numpy Generator seeded by [seed, stream, split, step] and never touches
    torch's global RNG, so all models of one seed see the same batches in the same order, whatever
    their size, dropout or initialisation, and a resumed run sees what it would have seen.
    """

    def __init__(self, dataset: Dataset, context_length: int, batch_size: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        import torch
        dataset.check_context(context_length)
        if batch_size < 1:
            raise SpecError(f"train.batch_size = {batch_size} must be a positive integer")
        self.dataset, self.context_length, self.batch_size, self.seed = dataset, context_length, batch_size, seed
        self.device = torch.device(device)
        self.evals: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in SPLITS}
        self.eval_bytes: dict[str, list[int]] = {name: [] for name in SPLITS}  # of each batch's targets

    def windows(self, split: str, stream: int, index: int, rows: int | None = None) -> np.ndarray:
        """(rows, context_length + 1) int64 token windows; rows: batch_size unless given."""
        import numpy as np
        tokens = self.dataset.split(split)
        rng = np.random.default_rng([self.seed, stream, SPLITS[split], index])
        starts = rng.integers(0, len(tokens) - self.context_length, size=rows or self.batch_size)
        return tokens[starts[:, None] + np.arange(self.context_length + 1)].astype(np.int64)

    def to_device(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        pairs = (torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy()))
        if self.device.type == "cuda":  # page-locked host memory lets the copy overlap compute
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in pairs)
        return tuple(t.to(self.device) for t in pairs)

    def batch(self, split: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): inputs and next-token targets, int64 (batch_size, context_length)."""
        return self.to_device(self.windows(split, TRAIN_STREAM, step))

    def eval_batches(self, split: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This seed's first n evaluation batches of `split`, EVAL_ROWS windows each whatever the batch (made once)."""
        cached, sizes = self.evals[split_name(split)], self.eval_bytes[split]
        for i in range(len(cached), n):
            windows = self.windows(split, EVAL_STREAM, i, EVAL_ROWS)
            cached.append(self.to_device(windows))
            sizes.append(int(self.dataset.token_bytes[windows[:, 1:]].sum()))
        return cached[:n]

    def eval_bits_per_byte(self, split: str, n: int, loss: float) -> float:
        """The mean loss (nats/token) of the first n evaluation batches in bits per byte of the text
        they score: their total nats over the UTF-8 bytes of their target tokens, over ln 2."""
        self.eval_batches(split, n)
        nats = loss * n * EVAL_ROWS * self.context_length
        return nats / sum(self.eval_bytes[split][:n]) / math.log(2)


# -- command line ------------------------------------------------------------------------------
def table(entry: CacheEntry, seconds: float) -> str:
    meta, texts = entry.meta, entry.texts
    test = texts["test"].n_bytes > 0
    rows = [("corpus", entry.corpus_name), ("sha256", meta["corpus_sha256"]),
            ("tokenizer", entry.tokenizer.name),
            ("characters", f"{entry.characters:,}"), ("bytes", f"{meta['bytes']:,}"),
            ("tokens", f"{meta['tokens']:,}"), ("vocabulary", f"{meta['vocab_size']:,}"),
            ("bytes per token", f"{meta['bytes'] / max(meta['tokens'], 1):.3f}"),
            ("train tokens", f"{texts['train'].n_tokens:,}"),
            *([("test tokens", f"{texts['test'].n_tokens:,} ({entry.test_fraction:g} of the bytes, just before val)")] if test else []),
            ("val tokens", f"{texts['val'].n_tokens:,} (the last {entry.val_fraction:g} of the bytes)"),
            ("validation text", texts["val"].describe()),
            *([("test text", texts["test"].describe())] if test else []),
            ("cache", str(entry.tokens_path)), ("cache hit", "yes" if entry.hit else "no"),
            ("time", f"{seconds:.3f} s (read, hash, {'load' if entry.hit else 'tokenize and cache'})")]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def parse_tokenizer(arg: str) -> Any:
    """A name (`gpt2`) or a JSON spec (`{"name": "char", "vocab": "ab"}`)."""
    if not arg.lstrip().startswith("{"):
        return arg
    try:
        return json.loads(arg)
    except ValueError as e:
        raise SpecError(f"data.tokenizer = {arg!r} is neither a tokenizer name nor a JSON spec: {e}") from None


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m experiments.data",
        description="Tokenize a corpus (once: the result is cached) and show how big it is.")
    parser.add_argument("--corpus", default="embedded",
                        help=f"a corpus name ({', '.join(CORPUS.names())}) or the path of a UTF-8 text file")
    parser.add_argument("--tokenizer", default="char",
                        help=f"a tokenizer name ({', '.join(TOKENIZER.names())}) or a JSON spec")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="the last fraction of the text's bytes held out for validation, in (0, 0.5]")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="the fraction of the bytes just before the validation text held out as a "
                             "test text, in [0, 0.5) (default 0: none)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        entry = prepare(args.corpus, parse_tokenizer(args.tokenizer), args.val_fraction, args.test_fraction)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(entry, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
