"""Data layer: corpora, the token cache, splits and bits per byte, paired batches, bad input, CLI."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import experiments.data as data
from components.tokenizer import CharTokenizer
from experiments.data import Batches, load_dataset, prepare
from experiments.schema import EVAL_ROWS
from registry import SpecError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedded_text() -> str:
    return data.Embedded().read().decode("utf-8")


@pytest.fixture
def write(tmp_path: Path):
    """write(name, text or bytes) -> path of a file in this test's folder."""
    def write(name: str, content: str | bytes) -> str:
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return str(path)
    return write


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAB_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "experiments.data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


# -- corpora -----------------------------------------------------------------------------------
def test_embedded_corpus_is_the_pydoc_topics_in_key_order(embedded_text: str) -> None:
    from pydoc_data.topics import topics
    assert embedded_text == "\n\n".join(topics[k] for k in sorted(topics))
    assert len(embedded_text) > 100_000


def test_a_path_corpus_reads_the_file(lab_cache: Path, write) -> None:
    ds = load_dataset(write("data.txt", "to be or not to be\n" * 20), "char")
    assert ds.corpus_name.endswith("data.txt")
    assert ds.tokenizer.decode(ds.tokens.tolist()) == "to be or not to be\n" * 20


# -- cache -------------------------------------------------------------------------------------
def test_tokens_are_cached_once_then_memory_mapped(lab_cache: Path, embedded_text: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset("embedded", "char")
    assert not first.cache_hit and first.cache_path.is_file()
    assert first.cache_path.parent == lab_cache / "tokens"
    assert first.tokens.dtype == np.uint16 and len(first.tokens) == len(embedded_text)
    written = {p.name: p.stat().st_mtime_ns for p in first.cache_path.parent.iterdir()}
    assert len(written) == 3  # ids, byte lengths, metadata

    def no_tokenizing(*_):
        raise AssertionError("a cache hit must not tokenize again")
    monkeypatch.setattr(CharTokenizer, "encode_array", no_tokenizing)
    second = load_dataset("embedded", "char")
    assert second.cache_hit and isinstance(second.tokens, np.memmap)
    assert {p.name: p.stat().st_mtime_ns for p in second.cache_path.parent.iterdir()} == written
    assert np.array_equal(first.tokens, second.tokens)
    assert second.tokenizer.decode(second.tokens.tolist()) == embedded_text
    meta = json.loads(second.cache_path.with_suffix(".json").read_text())
    assert meta["corpus_sha256"] == hashlib.sha256(embedded_text.encode()).hexdigest() == second.corpus_sha256
    assert meta["tokenizer"] == second.tokenizer.spec()


def test_each_tokenizer_gets_its_own_entry_and_a_damaged_entry_is_rebuilt(lab_cache: Path) -> None:
    char, byte = load_dataset("embedded", "char"), load_dataset("embedded", "byte")
    assert char.cache_path != byte.cache_path and not byte.cache_hit
    expected, path = np.array(byte.tokens), byte.cache_path
    del byte
    path.write_bytes(b"truncated")
    again = load_dataset("embedded", "byte")
    assert not again.cache_hit and np.array_equal(again.tokens, expected)
    assert load_dataset("embedded", "byte").cache_hit


def test_cache_folder_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "lab"))
    assert data.cache_dir() == tmp_path / "lab"
    monkeypatch.delenv("LAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "gpt2-ablation-lab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path.home() / ".cache" / "gpt2-ablation-lab"


CONCURRENT_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import experiments.data as data
    # Both processes must reach the writes together: each waits for the other before writing.
    ready, real_write = Path(sys.argv[2]), data.atomic_write
    def write_together(path, write, mode):
        (ready / sys.argv[3]).touch()
        deadline = time.time() + 20
        while len(list(ready.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.005)
        real_write(path, write, mode)
    data.atomic_write = write_together
    ds = data.load_dataset(sys.argv[1], "char")
    print(ds.cache_hit, ds.tokens.sum())
""")


def test_two_processes_building_one_entry_at_once_both_succeed(lab_cache: Path, write, tmp_path: Path) -> None:
    corpus = write("big.txt", "".join(chr(0x41 + i % 50) for i in range(300_000)))
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "LAB_CACHE_DIR": str(lab_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILD, corpus, str(ready), str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len({out for out, _ in outs}) == 1 and outs[0][0].startswith("False")
    assert not list((lab_cache / "tokens").glob("*.tmp")) and len(list(ready.iterdir())) == 2
    ds = load_dataset(corpus, "char")
    assert ds.cache_hit and str(ds.tokens.sum()) == outs[0][0].split()[1]


@pytest.mark.parametrize("distinct, dtype", [(65_536, np.uint16), (65_537, np.uint32)])
def test_ids_are_uint16_when_the_vocabulary_fits_else_uint32(lab_cache: Path, write, distinct: int,
                                                            dtype: type) -> None:
    chars = [chr(c) for c in range(0x20, 0x20 + distinct + 2048) if not 0xD800 <= c <= 0xDFFF][:distinct]
    text = "".join(chars) * 2
    ds = load_dataset(write("wide.txt", text), "char", val_fraction=0.5)
    assert ds.vocab_size == distinct and ds.tokens.dtype == dtype
    assert ds.tokenizer.decode(ds.tokens.tolist()) == text
    assert ds.split_bytes["train"] + ds.split_bytes["val"] == len(text.encode("utf-8"))


# -- the texts: split by bytes, one validation text for every tokenizer --------------------------
def test_the_validation_text_is_the_last_bytes_whatever_the_tokenizer(lab_cache: Path, embedded_text: str) -> None:
    raw = embedded_text.encode()
    val_start = len(raw) - int(len(raw) * 0.2)
    for tokenizer in ("char", "byte", "gpt2"):
        ds = load_dataset("embedded", tokenizer, val_fraction=0.2)
        assert (ds.texts["val"].start, ds.texts["val"].end) == (val_start, len(raw))  # ASCII there: no shift
        assert ds.texts["val"].sha256 == hashlib.sha256(raw[val_start:]).hexdigest()
        assert ds.split_bytes == {"train": val_start, "test": 0, "val": len(raw) - val_start}
        # each text is tokenized on its own: its tokens decode to exactly its bytes, and cover them
        for name, (start, end) in {"train": (0, val_start), "val": (val_start, len(raw))}.items():
            assert ds.tokenizer.decode(ds.split(name).tolist()).encode() == raw[start:end], (tokenizer, name)
            assert ds.token_bytes[ds.split(name)].sum() == end - start
        assert len(ds.test) == 0 and len(ds.tokens) == len(ds.train) + len(ds.val)


def test_a_cut_inside_a_character_moves_to_the_next_character(lab_cache: Path, write) -> None:
    text = "é" * 100 + "abcdefghij"  # 210 bytes, each 'é' two of them from an even offset
    raw = text.encode()
    # the last 10% would start at byte 189, the 10% before it at 169: both inside an 'é'
    assert data.text_ranges(raw, 0.1) == {"train": (0, 190), "test": (190, 190), "val": (190, 210)}
    assert data.text_ranges(raw, 0.1, 0.1) == {"train": (0, 170), "test": (170, 190), "val": (190, 210)}
    path = write("accents.txt", text)
    texts = {t: load_dataset(path, t, 0.1, 0.1).texts for t in ("char", "byte", "gpt2")}
    assert [(t.start, t.end, t.sha256) for t in texts["char"].values()] == \
        [(t.start, t.end, t.sha256) for t in texts["gpt2"].values()] == \
        [(t.start, t.end, t.sha256) for t in texts["byte"].values()]
    assert texts["char"]["test"].n_tokens == 10 and texts["byte"]["test"].n_tokens == 20


def test_a_test_text_is_held_out_just_before_the_validation_text(lab_cache: Path, embedded_text: str) -> None:
    raw = embedded_text.encode()
    ds = load_dataset("embedded", "gpt2", val_fraction=0.1, test_fraction=0.15)
    train, test, val = (ds.texts[p] for p in ("train", "test", "val"))
    assert (train.start, train.end, test.end, val.end) == (0, test.start, val.start, len(raw))
    assert test.n_bytes == pytest.approx(0.15 * len(raw), abs=4) and val.n_bytes == pytest.approx(0.1 * len(raw), abs=4)
    assert test.sha256 == hashlib.sha256(raw[test.start:test.end]).hexdigest()
    assert ds.tokenizer.decode(ds.test.tolist()).encode() == raw[test.start:test.end]
    assert (train.stop, test.first, test.stop, val.first) == (test.first, len(ds.train), val.first, len(ds.train) + len(ds.test))
    # the validation text (and its tokens) do not depend on whether a test text is held out
    plain = load_dataset("embedded", "gpt2").texts["val"]
    assert (plain.start, plain.end, plain.sha256, plain.n_tokens) == (val.start, val.end, val.sha256, val.n_tokens)


def test_an_old_cache_format_is_never_read(lab_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "CACHE_FORMAT", 1)
    old = load_dataset("embedded", "byte")
    monkeypatch.setattr(data, "CACHE_FORMAT", 2)
    new = load_dataset("embedded", "byte")
    assert not new.cache_hit and new.cache_path != old.cache_path
    key = new.cache_path.stem
    meta_path = new.cache_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"format": 1}))  # an entry of another format under this key
    assert data.TokenCache().lookup(key, new.corpus_sha256, new.tokenizer.spec(),
                                    data.text_ranges(data.Embedded().read(), 0.1)) is None
    assert not load_dataset("embedded", "byte").cache_hit


def test_each_split_gets_its_own_cache_entry(lab_cache: Path) -> None:
    a, b = load_dataset("embedded", "char", 0.1), load_dataset("embedded", "char", 0.2)
    assert a.cache_path != b.cache_path and not b.cache_hit
    assert load_dataset("embedded", "char", 0.1, 0.0).cache_hit


# -- batches -----------------------------------------------------------------------------------
@pytest.fixture
def dataset(lab_cache: Path):
    return load_dataset("embedded", "char")


def test_batches_are_shifted_windows_of_the_split(dataset) -> None:
    x, y = Batches(dataset, context_length=16, batch_size=4, seed=0).batch("train", 0)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(dataset.train), 17)
    for row_x, row_y in zip(x.numpy(), y.numpy()):  # each row is some window of the train split
        assert (windows == np.concatenate([row_x, row_y[-1:]])).all(axis=1).any()


def test_batches_are_a_pure_function_of_seed_split_and_step(dataset) -> None:
    one = Batches(dataset, context_length=32, batch_size=8, seed=0)
    x, y = one.batch("train", 5)
    one.batch("train", 6)
    one.eval_batches("val", 2)
    again = one.batch("train", 5)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, one.batch("train", 6)[0])
    assert not torch.equal(x, one.batch("val", 5)[0])
    assert not torch.equal(x, Batches(dataset, context_length=32, batch_size=8, seed=1).batch("train", 5)[0])


def test_two_models_of_one_seed_see_identical_batches(dataset) -> None:
    """Whatever a model does to torch's RNG while it is built or trained, its batches don't change."""
    sequences = []
    for width in (8, 256):
        torch.manual_seed(width)
        model = torch.nn.Sequential(torch.nn.Embedding(dataset.vocab_size, width), torch.nn.Dropout(0.5))
        batches = Batches(dataset, context_length=32, batch_size=8, seed=3)
        seen = []
        for step in range(5):
            x, y = batches.batch("train", step)
            model(x)  # dropout draws from torch's global generator
            seen.append((x, y))
        sequences.append(seen + batches.eval_batches("val", 3))
    for (xa, ya), (xb, yb) in zip(*sequences):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_eval_batches_are_fixed_and_separate_from_training(dataset) -> None:
    batches = Batches(dataset, context_length=16, batch_size=4, seed=0)
    first = batches.eval_batches("val", 3)
    assert len(first) == 3 and len(batches.eval_batches("val", 5)) == 5
    fresh = Batches(dataset, context_length=16, batch_size=4, seed=0).eval_batches("val", 3)
    for (xa, ya), (xb, yb) in zip(first, fresh):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], batches.batch("val", 0)[0])
    assert len(batches.eval_batches("train", 2)) == 2
    assert not torch.equal(batches.eval_batches("train", 1)[0][0], first[0][0])


def test_batches_leave_torch_global_rng_alone(dataset) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    batches = Batches(dataset, context_length=16, batch_size=4, seed=0)
    batches.batch("train", 0)
    batches.eval_batches("val", 2)
    assert torch.equal(state, torch.get_rng_state())


def test_unknown_split_is_refused(dataset) -> None:
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        Batches(dataset, context_length=16, batch_size=4, seed=0).batch("dev", 0)


def test_sampled_bits_per_byte_are_the_windows_nats_over_their_target_bytes(lab_cache: Path) -> None:
    ds = load_dataset("embedded", "gpt2")
    batches = Batches(ds, context_length=16, batch_size=4, seed=0)
    targets = np.concatenate([y.numpy().ravel() for _, y in batches.eval_batches("val", 3)])
    assert len(targets) == 3 * EVAL_ROWS * 16  # evaluation batches have EVAL_ROWS windows, whatever batch_size
    expected = 2.5 * len(targets) / ds.token_bytes[targets].sum() / math.log(2)
    assert batches.eval_bits_per_byte("val", 3, 2.5) == pytest.approx(expected, rel=1e-12)
    # On a byte-level text every token is one byte: bits per byte is nats per token in bits.
    ascii = Batches(load_dataset("embedded", "byte"), context_length=16, batch_size=4, seed=0)
    assert ascii.eval_bits_per_byte("val", 2, math.log(2)) == pytest.approx(1.0)


# -- bad input ---------------------------------------------------------------------------------
def message(**kwargs) -> str:
    with pytest.raises(SpecError) as error:
        load_dataset(**kwargs)
    return str(error.value)


def test_missing_file_folder_and_empty_file(lab_cache: Path, write, tmp_path: Path) -> None:
    assert "data.corpus" in (m := message(corpus=str(tmp_path / "nope.txt"))) and "no such file" in m
    assert "folder" in (m := message(corpus=str(tmp_path))) and "data.corpus" in m
    assert "empty" in (m := message(corpus=write("empty.txt", b""))) and "data.corpus" in m


def test_non_utf8_file_says_where(lab_cache: Path, write) -> None:
    m = message(corpus=write("latin1.txt", "hello\nwor".encode() + b"\xffld"))
    assert "data.corpus" in m and "not UTF-8" in m and "0xFF" in m
    assert "offset 9" in m and "line 2, column 4" in m


@pytest.mark.parametrize("fraction", [0, 0.6, -0.1, True, "0.1", float("nan")])
def test_val_fraction_outside_the_range(lab_cache: Path, fraction) -> None:
    m = message(corpus="embedded", tokenizer="char", val_fraction=fraction)
    assert "data.val_fraction" in m and "(0, 0.5]" in m


def test_val_fraction_half_is_allowed(lab_cache: Path) -> None:
    ds = load_dataset("embedded", "byte", val_fraction=0.5)
    assert abs(len(ds.train) - len(ds.val)) <= 4  # the cut moves to a character boundary


@pytest.mark.parametrize("fraction", [-0.1, 0.5, True, "0.1", None])
def test_test_fraction_outside_the_range(lab_cache: Path, fraction) -> None:
    m = message(corpus="embedded", tokenizer="char", test_fraction=fraction)
    assert "data.test_fraction" in m and "[0, 0.5)" in m


def test_unknown_corpus_and_tokenizer_suggest_close_names(lab_cache: Path) -> None:
    m = message(corpus="shakespear")
    assert "data.corpus" in m and "did you mean 'shakespeare'" in m and "embedded" in m
    assert "did you mean 'gpt2'" in message(corpus="embedded", tokenizer="gtp2")
    both = message(corpus="embeded", tokenizer="chars", val_fraction=0)  # every problem at once
    assert both.startswith("3 problems") and "'embedded'" in both and "'char'" in both


def test_a_split_shorter_than_the_context_is_refused(lab_cache: Path, write) -> None:
    ds = load_dataset(write("tiny.txt", "abcdefghij" * 5), "char")  # 45 train, 5 val tokens
    ds.check_context(4)
    with pytest.raises(SpecError) as error:
        Batches(ds, context_length=8, batch_size=2, seed=0)
    assert "model.context_length = 8" in str(error.value) and "val split has 5 tokens" in str(error.value)
    assert "train split" not in str(error.value)
    with pytest.raises(SpecError, match="train split has 45 tokens and the val split"):
        ds.check_context(45)


def test_char_spec_from_another_corpus_names_the_unseen_character(lab_cache: Path, write) -> None:
    m = message(corpus=write("x.txt", "abcz"), tokenizer={"name": "char", "vocab": "abc"})
    assert "'z'" in m and "position 3" in m


# -- shakespeare download (never the network: `fetch` is replaced) --------------------------------
def fake_shakespeare(monkeypatch: pytest.MonkeyPatch, text: bytes) -> list[str]:
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return text
    monkeypatch.setattr(data, "fetch", fetch)
    return calls


def test_shakespeare_is_downloaded_once_checked_and_cached(lab_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    text = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(text).hexdigest())
    calls = fake_shakespeare(monkeypatch, text)
    ds = load_dataset("shakespeare", "char")
    assert calls == [data.SHAKESPEARE_URL] and ds.corpus_name == "shakespeare"
    assert (lab_cache / "corpora" / "tinyshakespeare.txt").read_bytes() == text
    assert load_dataset("shakespeare", "byte").corpus_sha256 == hashlib.sha256(text).hexdigest()
    assert len(calls) == 1


def test_shakespeare_checksum_mismatch(lab_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_shakespeare(monkeypatch, b"not shakespeare")
    m = message(corpus="shakespeare")
    assert "sha256" in m and data.SHAKESPEARE_SHA256 in m and "not saved" in m
    assert not (lab_cache / "corpora" / "tinyshakespeare.txt").exists()
    # A wrong file placed in the cache by hand is refused too.
    (lab_cache / "corpora").mkdir(parents=True)
    (lab_cache / "corpora" / "tinyshakespeare.txt").write_bytes(b"also not shakespeare")
    assert "delete it" in message(corpus="shakespeare")


def test_shakespeare_offline_says_how_to_use_a_local_copy(lab_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str) -> bytes:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(data, "fetch", offline)
    m = message(corpus="shakespeare")
    assert "could not be downloaded" in m and "local copy" in m and "data.corpus" in m
    assert str(lab_cache / "corpora" / "tinyshakespeare.txt") in m


# -- lean imports and the command line ---------------------------------------------------------
def test_a_cache_hit_on_the_command_line_loads_no_heavy_module(lab_cache: Path) -> None:
    prepare("embedded", "gpt2")
    code = ("import sys, io, contextlib, experiments.data as d\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: d.main(['--tokenizer', 'gpt2'])\n"
            "assert 'cache hit        yes' in out.getvalue(), out.getvalue()\n"
            "print(sorted({'numpy', 'torch', 'tiktoken', 'pandas'} & set(sys.modules)))")
    env = {**os.environ, "LAB_CACHE_DIR": str(lab_cache)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_prints_the_table(lab_cache: Path) -> None:
    first = run_cli("--corpus", "embedded", "--tokenizer", "char", cache=lab_cache)
    assert first.returncode == 0, first.stderr
    rows = dict(re.match(r"(.+?)  +(.*)", line).groups() for line in first.stdout.splitlines())
    assert rows["tokens"] == rows["characters"] and rows["cache hit"] == "no"
    assert rows["vocabulary"] == str(len(set(data.Embedded().read().decode())))
    second = run_cli("--tokenizer", "char", "--val-fraction", "0.2", cache=lab_cache)
    assert "cache hit        no" in second.stdout and "(the last 0.2 of the bytes)" in second.stdout
    assert "cache hit        yes" in run_cli("--tokenizer", "char", "--val-fraction", "0.2", cache=lab_cache).stdout


def cli_lines(capsys: pytest.CaptureFixture, *args: str) -> dict[str, str]:
    assert data.main(list(args)) == 0
    return {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}


@pytest.mark.parametrize("corpus", ["embedded", "accents"])
def test_cli_prints_one_validation_text_for_every_tokenizer(lab_cache: Path, write, capsys, corpus: str) -> None:
    corpus = write("accents.txt", "naïve café " * 3000) if corpus == "accents" else corpus
    raw = data.open_corpus(corpus).read()
    lines = [cli_lines(capsys, "--corpus", corpus, "--tokenizer", t, "--test-fraction", "0.1")
             for t in ("char", "byte", "gpt2")]
    for label in ("validation text", "test text"):
        assert lines[0][label] == lines[1][label] == lines[2][label]
        start, end, total, digest = re.fullmatch(r"\S+ text +bytes (\d+)-(\d+) of (\d+), sha256 ([0-9a-f]{64})",
                                                 lines[0][label]).groups()
        assert int(total) == len(raw) and hashlib.sha256(raw[int(start):int(end)]).hexdigest() == digest
    assert "test text" not in cli_lines(capsys, "--corpus", corpus)


@pytest.mark.parametrize("args", [["--corpus", "no/such/file.txt"], ["--val-fraction", "0.6"], ["--test-fraction", "0.5"],
                                  ["--tokenizer", "gtp2"], ["--tokenizer", "{bad json"]])
def test_cli_bad_input_exits_2_without_traceback(lab_cache: Path, args: list[str]) -> None:
    out = run_cli(*args, cache=lab_cache)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
