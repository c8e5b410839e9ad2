"""A trained run as a Hugging Face GPT-2 (`python -m experiments.export` is the command): which runs can be
exported, their config.json and weights, the tokenizer files, the model card, written through a staging folder
so that a failed export leaves nothing behind."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

from experiments import files, interrupts
from experiments.checkpoint import check_run_dir, load_run, read_run_spec
from registry import Registry, SpecError, cut

ANY = None  # an option export accepts with every value

# The components GPT-2 has, and the options each may take: {field: {name: {option: allowed values or ANY}}}.
GPT2_EQUIVALENTS: dict[str, dict[str, dict[str, tuple | None]]] = {
    "positional": {"learned": {}},
    "attention": {"multi_head": {"impl": ANY}},               # sdpa and naive compute the same function
    "norm": {"layernorm": {"eps": ANY, "bias": (True,)}},     # GPT-2's LayerNorm always has a bias
    "block": {"pre": {}},
    "feedforward": {"gelu_mlp": {"mult": ANY, "approximate": ("tanh", "none")}},
    "head": {"tied": {}, "untied": {}},
}
# Our nn.GELU(approximate=...) -> the activation_function name transformers gives the same function.
ACTIVATIONS = {"tanh": "gelu_new", "none": "gelu"}
TIED = {"tied": True, "untied": False}  # head -> tie_word_embeddings
GPT2_END_OF_TEXT = 50256


# -- what can be exported ------------------------------------------------------------------------
def describe_supported(field: str) -> str:
    def one(name: str, options: dict[str, tuple | None]) -> str:
        limits = [f"{k}: {' | '.join(map(str, v)).lower()}" for k, v in options.items() if v is not ANY]
        return name + (f" ({', '.join(limits)})" if limits else "")
    return " or ".join(one(n, o) for n, o in GPT2_EQUIVALENTS[field].items())


def component_problems(field: str, value: Any) -> list[str]:
    name, options = Registry.split(value)
    supported = GPT2_EQUIVALENTS[field]
    if name not in supported:
        return [f"model.{field} = {name!r} has no GPT-2 equivalent; export --format hf supports "
                f"model.{field}: {describe_supported(field)}"]
    problems = []
    allowed = supported[name]
    for option, given in options.items():
        if option in allowed and (allowed[option] is ANY or given in allowed[option]):
            continue
        problems.append(f"model.{field}.{option} = {given!r} ({field} {name!r}) has no GPT-2 equivalent; "
                        f"export --format hf supports model.{field}: {describe_supported(field)}")
    return problems


def export_problems(model_spec: dict[str, Any]) -> list[str]:
    """Every reason a resolved run's model cannot become a GPT2LMHeadModel ([] when it can)."""
    return [p for field in GPT2_EQUIVALENTS for p in component_problems(field, model_spec[field])]


# -- config and weights --------------------------------------------------------------------------
def hf_config(model_spec: dict[str, Any], vocab_size: int, tokenizer_name: str) -> dict[str, Any]:
    """transformers' GPT2Config fields for the run's model (written as plain JSON: no transformers needed)."""
    _, norm = Registry.split(model_spec["norm"])
    _, mlp = Registry.split(model_spec["feedforward"])
    d_model, dropout = model_spec["d_model"], model_spec["dropout"]
    # Only GPT-2's own vocabulary has its <|endoftext|>; a char or byte vocabulary has no such token.
    end_of_text = GPT2_END_OF_TEXT if tokenizer_name == "gpt2" else None
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": vocab_size, "n_positions": model_spec["context_length"], "n_embd": d_model,
        "n_layer": model_spec["n_layers"], "n_head": model_spec["n_heads"],
        "n_inner": int(mlp.get("mult", 4.0) * d_model),             # the lab's hidden width, exactly
        "activation_function": ACTIVATIONS[mlp.get("approximate", "tanh")],
        "layer_norm_epsilon": norm.get("eps", 1e-5),
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": TIED[Registry.split(model_spec["head"])[0]],
        "bos_token_id": end_of_text, "eos_token_id": end_of_text, "use_cache": True,
    }


def conv1d(linear) -> Any:
    """GPT-2's Conv1D stores its weight as (in, out): the transpose of nn.Linear's (out, in)."""
    return linear.weight.detach().t()


def hf_tensors(model, tied: bool) -> dict[str, Any]:
    """The lab model's parameters under GPT2LMHeadModel's names and layouts."""
    tensors = {"transformer.wte.weight": model.token_embedding.weight.detach(),
               "transformer.wpe.weight": model.positional.embedding.weight.detach()}
    for i, block in enumerate(model.blocks):
        attn, mlp, (ln_1, ln_2) = block.attention, block.feedforward, block.norm
        p = f"transformer.h.{i}."
        tensors |= {
            p + "ln_1.weight": ln_1.weight.detach(), p + "ln_1.bias": ln_1.bias.detach(),
            p + "attn.c_attn.weight": conv1d(attn.qkv), p + "attn.c_attn.bias": attn.qkv.bias.detach(),  # [q|k|v] as GPT-2
            p + "attn.c_proj.weight": conv1d(attn.proj), p + "attn.c_proj.bias": attn.proj.bias.detach(),
            p + "ln_2.weight": ln_2.weight.detach(), p + "ln_2.bias": ln_2.bias.detach(),
            p + "mlp.c_fc.weight": conv1d(mlp.up), p + "mlp.c_fc.bias": mlp.up.bias.detach(),
            p + "mlp.c_proj.weight": conv1d(mlp.down), p + "mlp.c_proj.bias": mlp.down.bias.detach(),
        }
    tensors |= {"transformer.ln_f.weight": model.final_norm.weight.detach(),
                "transformer.ln_f.bias": model.final_norm.bias.detach()}
    if not tied:  # transformers re-ties a tied head to wte itself; an untied one is its own (Linear) matrix
        tensors["lm_head.weight"] = model.head.linear.weight.detach()
    # safetensors wants each tensor contiguous, in its own storage, on the CPU.
    return {k: v.float().cpu().contiguous().clone() for k, v in tensors.items()}


# -- tokenizer -----------------------------------------------------------------------------------
# Each writer puts a tokenizer transformers can load next to the weights and says what it wrote.
TokenizerWriter = Callable[[Path, Any, Path, int], str]


def write_gpt2_tokenizer(out: Path, tokenizer: Any, run_dir: Path, context_length: int) -> str:
    """GPT-2's vocab.json + merges.txt (the published files the lab's BPE is built from)."""
    from components.tokenizer import END_OF_TEXT, gpt2_data_dir

    folder = gpt2_data_dir()
    shutil.copyfile(folder / "encoder.json", out / "vocab.json")
    shutil.copyfile(folder / "vocab.bpe", out / "merges.txt")
    files.write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "add_prefix_space": False,
        "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT})
    return ("GPT-2's BPE: vocab.json and merges.txt are here, so `AutoTokenizer.from_pretrained(DIR)` "
            "encodes text as the run did (except text that spells <|endoftext|>, which the lab treats as "
            "plain text).")


def byte_symbols() -> list[str]:
    """The printable character GPT-2's byte-level alphabet gives each byte 0..255: printable Latin-1
    bytes stand for themselves, the rest take the code points from 256 up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)}
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def save_symbol_tokenizer(out: Path, vocab: dict[str, int], before: list, decoder: Any, context_length: int) -> None:
    """A Hugging Face tokenizer with one token per symbol (after the `before` pre-tokenizers):
    WordLevel over single characters, no unknown token, so unseen text fails as the lab's does."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([*before, pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")])
    tok.decoder = decoder
    tok.save(str(out / "tokenizer.json"))
    files.write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                               "model_max_length": context_length,
                                               "clean_up_tokenization_spaces": False})


def write_char_tokenizer(out: Path, tokenizer: Any, run_dir: Path, context_length: int) -> str:
    from tokenizers import decoders

    save_symbol_tokenizer(out, {c: i for i, c in enumerate(tokenizer.vocab)}, [], decoders.Fuse(), context_length)
    return ("the run's character vocabulary as a Hugging Face tokenizer.json (one token per character), so "
            "`AutoTokenizer.from_pretrained(DIR)` encodes text as the run did; " + write_lab_tokenizer(out, run_dir))


def write_byte_tokenizer(out: Path, tokenizer: Any, run_dir: Path, context_length: int) -> str:
    from tokenizers import decoders, pre_tokenizers

    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    save_symbol_tokenizer(out, vocab, [to_bytes], decoders.ByteLevel(), context_length)
    return ("UTF-8 bytes as a Hugging Face tokenizer.json (token id = byte value), so "
            "`AutoTokenizer.from_pretrained(DIR)` encodes text as the run did; " + write_lab_tokenizer(out, run_dir))


def write_lab_tokenizer(out: Path, run_dir: Path) -> str:
    """The lab's own tokenizer spec, as lab_tokenizer.json (transformers claims the name tokenizer.json)."""
    shutil.copyfile(run_dir / "tokenizer.json", out / "lab_tokenizer.json")
    return ("lab_tokenizer.json is the lab's own spec of it (`registry.TOKENIZER.build(spec, {'text': ''})` "
            "rebuilds it after `registry.load_all()`).")


def write_lab_only(out: Path, tokenizer: Any, run_dir: Path, context_length: int) -> str:
    return f"the lab's `{tokenizer.name}` tokenizer, which has no Hugging Face equivalent; " + write_lab_tokenizer(out, run_dir)


TOKENIZER_WRITERS: dict[str, TokenizerWriter] = {
    "gpt2": write_gpt2_tokenizer, "char": write_char_tokenizer, "byte": write_byte_tokenizer}


def write_tokenizer(out: Path, tokenizer: Any, run_dir: Path, context_length: int) -> str:
    writer = TOKENIZER_WRITERS.get(tokenizer.name, write_lab_only)
    try:
        return writer(out, tokenizer, run_dir, context_length)
    except ImportError:  # the char and byte writers need `tokenizers` (transformers installs it)
        return write_lab_only(out, tokenizer, run_dir, context_length)


# -- export --------------------------------------------------------------------------------------
MARK = ".lab_export.json"  # in every export folder: its files are ours to replace on the next export


class CannotWrite(Exception):
    """The --out folder cannot be written (read-only, immutable, full, a folder in the way ...): one line."""


def export_hf(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the run as a GPT2LMHeadModel folder; return what was written (for the CLI's summary).
    The files are written into a staging folder inside `out` and moved into place only once all of
    them are whole, so a failure (CannotWrite) leaves no export file, and no folder it created, behind."""
    if not str(out).strip():  # Path("") is the current folder: an unset shell variable must not export there
        raise SpecError("--out is empty (an unset shell variable?): give the folder to write the export to")
    run_dir, out = Path(run_dir), Path(out)
    check_run_dir(run_dir)
    problems = export_problems(read_run_spec(run_dir)["model"])  # refuse before loading any weights
    if problems:
        raise SpecError([f"run {run_dir.name} cannot be exported to GPT-2: {p}" for p in problems])
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {str(out)!r} is a file, not a folder")
    if lab := [name for name in files.RESULTS_MARKS if (out / name).exists()]:
        raise SpecError(f"--out {cut(str(out))!r} is a folder of the lab's results (it holds {lab[0]}): an export "
                        "there would replace its files; give a folder of its own")
    save = safetensors_save()
    model, tokenizer, spec = load_run(run_dir)
    config = hf_config(spec["model"], tokenizer.vocab_size, tokenizer.name)
    tied = config["tie_word_embeddings"]
    # metadata format=pt is what transformers checks for before it trusts a safetensors file.
    data = save(hf_tensors(model, tied), metadata={"format": "pt"})

    def write(folder: Path) -> str:
        files.write_json(folder / MARK, {"run": str(run_dir.resolve()), "complete": True})
        files.write_json(folder / "config.json", config)
        (folder / "model.safetensors").write_bytes(data)
        note = write_tokenizer(folder, tokenizer, run_dir, spec["model"]["context_length"])
        (folder / "README.md").write_text(model_card(run_dir, spec, config, note), encoding="utf-8")
        return note

    tokenizer_note = write_staged(out, write)
    return {"out": out, "tokenizer_note": tokenizer_note, "params": sum(p.numel() for p in model.parameters())}


def write_staged(out: Path, write: Callable[[Path], str]) -> str:
    """`write(folder)` into a new folder `out/.export.<random>.tmp`, then each file it wrote moved into
    `out` (publish). An OSError becomes CannotWrite, after the staging folder and every folder made for
    `out` are removed again."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders mkdir will make, deepest first
    stage = out / f".export.{secrets.token_hex(4)}.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        files.remove_stale_leftovers(out)  # staging folders of exports a kill cut short
        stage.mkdir()
        files.own(stage)
        note = write(stage)
        written = sorted(p.name for p in stage.iterdir() if p.name != files.OWNER)
        if not earlier_export(out, written) and (foreign := [name for name in written if (out / name).exists()]):
            raise SpecError(f"--out {cut(str(out))!r} already holds {', '.join(foreign)}, which no export of this "
                            "lab wrote there, and an export replaces its files: give a new or empty folder (or "
                            "one an earlier export wrote)")
        if blocked := [out / name for name in written if (out / name).is_dir()]:
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(blocked[0]))
        publish(stage, out, written)
        (stage / files.OWNER).unlink()
        stage.rmdir()
        return note
    except BaseException as err:  # a failure, or Ctrl-C: nothing half-written stays
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty folder: one this export made
        if isinstance(err, OSError):
            raise CannotWrite(cannot_write_message(err, out, stage)) from None
        raise


def earlier_export(out: Path, written: list[str]) -> bool:
    """Whether `out` holds an export of this lab, whose files are ours to replace: its mark, or (an export
    made before the mark) a GPT-2 config.json among nothing but the names an export writes."""
    if (out / MARK).is_file():
        return True
    try:
        names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return names <= set(written) and isinstance(config, dict) and config.get("architectures") == ["GPT2LMHeadModel"]


def publish(stage: Path, out: Path, written: list[str]) -> None:
    """Move the staged files into `out`, replacing an earlier export's, with Ctrl-C held. A kill part way
    must not leave one run's card and tokenizer beside another's weights that still load: the mark first
    says the folder is incomplete and config.json (without which nothing loads it) goes, then the files,
    config.json and the complete mark last."""
    last = [name for name in ("config.json", MARK) if name in written]
    with interrupts.ctrl_c_held():
        files.write_json(out / MARK, {"complete": False})
        try:
            (out / "config.json").unlink(missing_ok=True)
            for name in [n for n in written if n not in last] + last:
                os.replace(stage / name, out / name)
        except OSError as err:
            raise CannotWrite(cannot_write_message(err, out, stage).replace(
                "Nothing was written", "The export there is incomplete (no config.json: nothing loads it)")) from None


def cannot_write_message(err: OSError, out: Path, stage: Path) -> str:
    """'cannot write the export to <out>: <what> (<path>). ...', with the run command's wording of what
    happened (experiments/files.py); a path in the staging folder is named as the file it was for."""
    what, advice = files.FILESYSTEM_PROBLEMS.get(err.errno, (err.strerror or type(err).__name__, files.WRITABLE))
    where = str(err.filename or out)
    if where == str(stage) or where.startswith(str(stage) + os.sep):
        where = str(out / Path(where).relative_to(stage)) if where != str(stage) else str(out)
    where = where if len(where) <= 200 else where[:100] + "..." + where[-97:]
    advice = advice.replace("--results", "--out")  # the run command's advice, for this command's option
    return (f"cannot write the export to {cut(str(out))!r}: {what} ({where}). Nothing was written: {advice}, "
            "then rerun the same command")


def safetensors_save() -> Callable[..., bytes]:
    try:
        from safetensors.torch import save
    except ImportError:
        raise SpecError("export --format hf needs the safetensors package: pip install '.[hf]' "
                        "(or pip install safetensors transformers)") from None
    return save


def model_card(run_dir: Path, spec: dict[str, Any], config: dict[str, Any], tokenizer_note: str) -> str:
    components = ", ".join(f"{field} {Registry.split(spec['model'][field])[0]}" for field in GPT2_EQUIVALENTS)
    return "\n".join([
        f"# {spec.get('experiment', 'run')} / {spec.get('variant', '')} (seed {spec.get('seed')})",
        "",
        f"Exported from the GPT-2 ablation lab run `{run_dir.name}` ({components}).",
        f"GPT-2 shape: {config['n_layer']} layer{'s' * (config['n_layer'] != 1)}, {config['n_head']} head{'s' * (config['n_head'] != 1)}, width {config['n_embd']}, "
        f"context {config['n_positions']}, vocabulary {config['vocab_size']}, "
        f"{'tied' if config['tie_word_embeddings'] else 'untied'} head, activation {config['activation_function']}.",
        "",
        "```python",
        "from transformers import GPT2LMHeadModel",
        "model = GPT2LMHeadModel.from_pretrained(DIR)",
        "```",
        "",
        f"Tokenizer: {tokenizer_note}",
        "",
    ])
