"""`python -m experiments.export RUN_DIR --format hf --out DIR`: a trained run as a Hugging Face GPT-2.

Writes `config.json` and `model.safetensors` that `transformers.GPT2LMHeadModel.from_pretrained(DIR)`
loads with no network, the tokenizer where Hugging Face has an equivalent (GPT-2's BPE) or the lab's
own tokenizer spec otherwise, and a short README.md saying which. Only runs whose components all have
a GPT-2 equivalent can be exported; any other choice is named in one error before anything is written.

Exporting needs `safetensors` (pip install '.[hf]'); loading the result needs `transformers`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from experiments import files
from experiments.generate import load_run
from registry import SpecError

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
GPT2_END_OF_TEXT = 50256


# -- what can be exported ------------------------------------------------------------------------
def split_component(value: Any) -> tuple[str, dict[str, Any]]:
    """'pre' or {name: pre, ...} -> (name, options)."""
    if isinstance(value, dict):
        options = dict(value)
        return options.pop("name"), options
    return value, {}


def describe_supported(field: str) -> str:
    def one(name: str, options: dict[str, tuple | None]) -> str:
        limits = [f"{k}: {' | '.join(map(str, v)).lower()}" for k, v in options.items() if v is not ANY]
        return name + (f" ({', '.join(limits)})" if limits else "")
    return " or ".join(one(n, o) for n, o in GPT2_EQUIVALENTS[field].items())


def component_problems(field: str, value: Any) -> list[str]:
    name, options = split_component(value)
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
    _, norm = split_component(model_spec["norm"])
    _, mlp = split_component(model_spec["feedforward"])
    head, _ = split_component(model_spec["head"])
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
        "tie_word_embeddings": head == "tied",
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
def write_gpt2_tokenizer(out: Path, run_dir: Path, context_length: int) -> str:
    """GPT-2's vocab.json + merges.txt (the published files the lab's BPE is built from): AutoTokenizer loads them."""
    from components.tokenizer import END_OF_TEXT, gpt2_data_dir

    folder = gpt2_data_dir()
    shutil.copyfile(folder / "encoder.json", out / "vocab.json")
    shutil.copyfile(folder / "vocab.bpe", out / "merges.txt")
    files.write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "add_prefix_space": False,
        "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT})
    return ("GPT-2's BPE: vocab.json and merges.txt are here, so `AutoTokenizer.from_pretrained(DIR)` "
            "(GPT2TokenizerFast) encodes text exactly as the run did (text that spells <|endoftext|> aside: "
            "the lab treats it as plain text).")


def write_lab_tokenizer(out: Path, run_dir: Path, context_length: int) -> str:
    """The lab's own tokenizer spec; named lab_tokenizer.json because transformers reads tokenizer.json as its own format."""
    shutil.copyfile(run_dir / "tokenizer.json", out / "lab_tokenizer.json")
    spec = files.read_json(run_dir / "tokenizer.json")
    meaning = {"char": "token id i is the i-th character of its `vocab` string",
               "byte": "token id b is the UTF-8 byte b"}.get(spec.get("name"), "see the lab's components/tokenizer.py")
    return (f"the lab's `{spec.get('name')}` tokenizer, which has no Hugging Face equivalent: lab_tokenizer.json "
            f"holds its spec ({meaning}); rebuild it with `registry.TOKENIZER.build(spec, {{'text': ''}})` "
            "after `registry.load_all()`, or encode and decode by hand from that rule.")


TOKENIZER_WRITERS: dict[str, Callable[[Path, Path, int], str]] = {"gpt2": write_gpt2_tokenizer}


# -- export --------------------------------------------------------------------------------------
def export_hf(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the run as a GPT2LMHeadModel folder; return what was written (for the CLI's summary)."""
    run_dir, out = Path(run_dir), Path(out)
    model, tokenizer, spec = load_run(run_dir)
    problems = export_problems(spec["model"])
    if problems:
        raise SpecError([f"run {run_dir.name} cannot be exported to GPT-2: {p}" for p in problems])
    save = safetensors_save()
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)

    config = hf_config(spec["model"], tokenizer.vocab_size, tokenizer.name)
    tied = config["tie_word_embeddings"]
    files.write_json(out / "config.json", config)
    # metadata format=pt is what transformers checks for before it trusts a safetensors file.
    data = save(hf_tensors(model, tied), metadata={"format": "pt"})
    files.atomic_write(out / "model.safetensors", lambda f: f.write(data), mode="wb")
    writer = TOKENIZER_WRITERS.get(tokenizer.name, write_lab_tokenizer)
    tokenizer_note = writer(out, run_dir, spec["model"]["context_length"])
    files.write_text(out / "README.md", model_card(run_dir, spec, config, tokenizer_note))
    return {"out": out, "tokenizer_note": tokenizer_note, "params": sum(p.numel() for p in model.parameters())}


def safetensors_save() -> Callable[..., bytes]:
    try:
        from safetensors.torch import save
    except ImportError:
        raise SpecError("export --format hf needs the safetensors package: pip install '.[hf]' "
                        "(or pip install safetensors transformers)") from None
    return save


def model_card(run_dir: Path, spec: dict[str, Any], config: dict[str, Any], tokenizer_note: str) -> str:
    components = ", ".join(f"{field} {split_component(spec['model'][field])[0]}" for field in GPT2_EQUIVALENTS)
    return "\n".join([
        f"# {spec.get('experiment', 'run')} / {spec.get('variant', '')} (seed {spec.get('seed')})",
        "",
        f"Exported from the GPT-2 ablation lab run `{run_dir.name}` ({components}).",
        f"GPT-2 shape: {config['n_layer']} layers, {config['n_head']} heads, width {config['n_embd']}, "
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


# -- CLI -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run folder: results/<experiment>/runs/<run_id>")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: Hugging Face GPT2LMHeadModel (the only one)")
    p.add_argument("--out", required=True, help="folder to write (created if missing; our files in it are replaced)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = export_hf(args.run_dir, args.out)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {result['out']}/config.json and model.safetensors ({result['params']:,} parameters): "
          f"load with transformers.GPT2LMHeadModel.from_pretrained({str(result['out'])!r})")
    print(f"tokenizer: {result['tokenizer_note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
