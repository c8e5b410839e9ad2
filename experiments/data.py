"""Data: corpus -> tokenizer -> cached token array -> train/val splits -> batches.

Corpora are CORPUS variants (`embedded`, `shakespeare`) or paths to UTF-8 text files. A corpus is
tokenized once per (corpus sha256, tokenizer spec) into the cache folder: $LAB_CACHE_DIR, else
$XDG_CACHE_HOME/gpt2-ablation-lab (default ~/.cache/gpt2-ablation-lab). Later loads memory-map it.

    python -m experiments.data --corpus data.txt --tokenizer gpt2      # how many tokens is my data?

numpy and torch are imported inside the functions that use them, so that command stays fast on a
cache hit: it reads the corpus (for its sha256) and a small JSON, nothing more.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.tokenizer import Tokenizer
from experiments.files import atomic_write
from registry import CORPUS, TOKENIZER, SpecError

if TYPE_CHECKING:
    import numpy as np
    import torch

CACHE_FORMAT = 1  # bump when the files of a cache entry change meaning


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
        if self.path.is_dir():
            raise SpecError(f"{where} is a folder; give the path of one UTF-8 text file")
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise SpecError(f"{where}: no such file ({self.path.absolute()}); give the path of a "
                            f"UTF-8 text file or a corpus name ({', '.join(CORPUS.names())})") from None
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


# -- token cache -------------------------------------------------------------------------------
def split_sizes(n_tokens: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) token counts: the last `val_fraction` of the tokens is validation."""
    n_train = int(n_tokens * (1 - val_fraction))
    return n_train, n_tokens - n_train


def count_bytes(tokens: np.ndarray, token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of text that `tokens` cover, summed in chunks so a memory map stays paged out."""
    chunk = 1 << 22
    return sum(int(token_bytes[tokens[i:i + chunk]].sum(dtype="u8")) for i in range(0, len(tokens), chunk))


class TokenCache:
    """Token arrays on disk, one entry per (corpus sha256, tokenizer spec), built once.

    An entry is `<key>.npy` (the ids, uint16 when the vocabulary fits, else uint32),
    `<key>.token-bytes.npy` (UTF-8 bytes per id, for exact split byte counts) and `<key>.json`
    (counts, written last, so its presence means the arrays are complete).
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "tokens"

    @staticmethod
    def key(corpus_sha256: str, spec: dict[str, Any]) -> str:
        spec_hash = sha256(json.dumps(spec, sort_keys=True).encode())
        return f"{corpus_sha256[:16]}-{spec_hash[:16]}"

    def files(self, key: str) -> tuple[Path, Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.token-bytes.npy", self.root / f"{key}.json"

    def lookup(self, key: str, corpus_sha256: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        tokens, lengths, meta_path = self.files(key)
        try:
            meta = json.loads(meta_path.read_bytes())
            complete = tokens.stat().st_size == meta["tokens_file_bytes"] and lengths.is_file()
        except (OSError, ValueError, KeyError):
            return None
        same = meta.get("corpus_sha256") == corpus_sha256 and meta.get("tokenizer") == spec
        return meta if complete and same and meta.get("format") == CACHE_FORMAT else None

    def build(self, key: str, corpus: str, corpus_sha256: str, text: str, n_bytes: int,
              tokenizer: Tokenizer) -> dict[str, Any]:
        import numpy as np
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        tokens = tokenizer.encode_array(text).astype(dtype)
        lengths = tokenizer.token_bytes()
        covered = count_bytes(tokens, lengths)
        if covered != n_bytes:  # every split's byte count (so bits per byte) rests on this
            raise RuntimeError(f"tokenizer {tokenizer.name}: its tokens cover {covered} bytes of a "
                               f"{n_bytes}-byte corpus")
        tokens_path, lengths_path, meta_path = self.files(key)
        atomic_write(tokens_path, lambda f: np.save(f, tokens), mode="wb")
        atomic_write(lengths_path, lambda f: np.save(f, lengths), mode="wb")
        meta = {"format": CACHE_FORMAT, "corpus": corpus, "corpus_sha256": corpus_sha256,
                "tokenizer": tokenizer.spec(), "vocab_size": tokenizer.vocab_size,
                "characters": len(text), "bytes": n_bytes, "tokens": len(tokens),
                "dtype": np.dtype(dtype).name, "tokens_file_bytes": tokens_path.stat().st_size}
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()), mode="wb")
        return meta


class CacheEntry:
    """A corpus and tokenizer matched with their token cache entry (built if it was missing)."""

    def __init__(self, corpus_name: str, tokenizer: Tokenizer, val_fraction: float, meta: dict[str, Any],
                 files: tuple[Path, Path, Path], hit: bool) -> None:
        self.corpus_name, self.tokenizer, self.val_fraction = corpus_name, tokenizer, val_fraction
        self.meta, self.hit = meta, hit
        self.tokens_path, self.token_bytes_path, self.meta_path = files
        self.n_train, self.n_val = split_sizes(meta["tokens"], val_fraction)


def val_fraction_problems(val_fraction: Any) -> list[str]:
    number = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
    if number and 0 < val_fraction <= 0.5:
        return []
    return [f"data.val_fraction = {val_fraction!r} must be a number in (0, 0.5]: the last val_fraction "
            "of the tokens is held out for validation (0.1 is usual)"]


def prepare(corpus: Any = "embedded", tokenizer: Any = "char", val_fraction: float = 0.1,
            cache: TokenCache | None = None) -> CacheEntry:
    """Validate everything (reporting every problem at once), then find or build the cache entry."""
    problems = val_fraction_problems(val_fraction) + TOKENIZER.check(tokenizer, "data.tokenizer")
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
    key = cache.key(corpus_sha256, spec)
    meta = cache.lookup(key, corpus_sha256, spec)
    hit = meta is not None
    if meta is None:
        meta = cache.build(key, source.name, corpus_sha256, text, len(raw), built)
    return CacheEntry(source.name, built, val_fraction, meta, cache.files(key), hit)


# -- dataset -----------------------------------------------------------------------------------
class Dataset:
    """A tokenized corpus: train is the first 1 - val_fraction of its tokens, val the rest."""

    def __init__(self, entry: CacheEntry) -> None:
        import numpy as np
        self.tokenizer = entry.tokenizer
        self.vocab_size: int = entry.tokenizer.vocab_size
        self.corpus_name, self.corpus_sha256 = entry.corpus_name, entry.meta["corpus_sha256"]
        self.cache_path, self.cache_hit = entry.tokens_path, entry.hit
        self.val_fraction, self.meta = entry.val_fraction, entry.meta
        self.tokens = np.load(entry.tokens_path, mmap_mode="r")
        self.train, self.val = self.tokens[:entry.n_train], self.tokens[entry.n_train:]
        val_bytes = count_bytes(self.val, np.load(entry.token_bytes_path))
        self.split_bytes = {"train": entry.meta["bytes"] - val_bytes, "val": val_bytes}

    def split(self, name: str) -> np.ndarray:
        return self.train if split_name(name) == "train" else self.val

    def bits_per_byte(self, loss_nats_per_token: float, split: str = "val") -> float:
        """A loss in nats per token as bits per UTF-8 byte: comparable across tokenizers."""
        return loss_nats_per_token * len(self.split(split)) / self.split_bytes[split] / math.log(2)

    def check_context(self, context_length: int) -> None:
        short = [f"the {name} split has {len(self.split(name)):,} tokens" for name in SPLITS
                 if len(self.split(name)) < context_length + 1]
        if short:
            raise SpecError(f"model.context_length = {context_length} is too long for corpus "
                            f"{self.corpus_name!r} with tokenizer {self.tokenizer.name}: "
                            f"{' and '.join(short)}, but a training window needs context_length + 1 = "
                            f"{context_length + 1}; use a shorter context, a larger data.val_fraction "
                            "or a bigger corpus")


def load_dataset(corpus: Any = "embedded", tokenizer: Any = "char", val_fraction: float = 0.1) -> Dataset:
    """The corpus tokenized (from the cache when it can be) and split; SpecError on bad input."""
    return Dataset(prepare(corpus, tokenizer, val_fraction))


# -- batches -----------------------------------------------------------------------------------
SPLITS = {"train": 0, "val": 1}    # the split's code in a batch's seed
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

    def windows(self, split: str, stream: int, index: int) -> np.ndarray:
        """(batch_size, context_length + 1) int64 token windows."""
        import numpy as np
        tokens = self.dataset.split(split)
        rng = np.random.default_rng([self.seed, stream, SPLITS[split], index])
        starts = rng.integers(0, len(tokens) - self.context_length, size=self.batch_size)
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
        """The first n of this seed's fixed evaluation batches for `split` (made once, then reused)."""
        cached = self.evals[split_name(split)]
        cached += [self.to_device(self.windows(split, EVAL_STREAM, i)) for i in range(len(cached), n)]
        return cached[:n]


# -- command line ------------------------------------------------------------------------------
def table(entry: CacheEntry, seconds: float) -> str:
    meta = entry.meta
    rows = [("corpus", entry.corpus_name), ("sha256", meta["corpus_sha256"]),
            ("tokenizer", entry.tokenizer.name),
            ("characters", f"{meta['characters']:,}"), ("bytes", f"{meta['bytes']:,}"),
            ("tokens", f"{meta['tokens']:,}"), ("vocabulary", f"{meta['vocab_size']:,}"),
            ("bytes per token", f"{meta['bytes'] / meta['tokens']:.3f}"),
            ("train tokens", f"{entry.n_train:,}"),
            ("val tokens", f"{entry.n_val:,} (last {entry.val_fraction:g})"),
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
                        help="the last fraction of tokens held out for validation, in (0, 0.5]")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        entry = prepare(args.corpus, parse_tokenizer(args.tokenizer), args.val_fraction)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(entry, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
