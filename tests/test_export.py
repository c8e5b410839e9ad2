"""Export to Hugging Face GPT-2: transformers loads the folder and computes what the lab's model does."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments import export, files, hf_export
from experiments.checkpoint import load_run
from tiny_runs import tiny_runs

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[dev]' installs it)")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install -e '.[dev]' installs it)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{variant: (run folder, export folder)}, exported through the CLI."""
    out = {}
    for variant, run_dir in tiny_runs().items():
        target = tmp_path_factory.mktemp(f"hf-{variant}")
        assert export.main([str(run_dir), "--format", "hf", "--out", str(target)]) == 0
        out[variant] = (run_dir, target)
    return out


def load_both(run_dir: Path, hf_dir: Path):
    model, tokenizer, _ = load_run(run_dir)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    return model, tokenizer, hf


@pytest.mark.parametrize("variant", ["baseline", "untied"])
def test_logits_match(exported, variant: str) -> None:
    model, _, hf = load_both(*exported[variant])
    ids = torch.randint(0, model.config.vocab_size, (4, model.context_length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
    assert hf.dtype == torch.float32
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("variant", ["baseline", "untied"])
def test_greedy_generation_matches(exported, variant: str) -> None:
    model, tokenizer, hf = load_both(*exported[variant])
    varied = 0
    for text in ("import ", "the ", "def f(", "x = "):
        prompt = torch.tensor([tokenizer.encode(text)])
        new = model.context_length - prompt.shape[1]  # transformers cannot go past n_positions
        ours = model.generate(prompt, new, temperature=0)
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False,
                             pad_token_id=0)
        assert ours.tolist() == theirs.tolist(), text
        varied += len(set(ours[0, prompt.shape[1]:].tolist())) > 1
    assert varied >= 2, "greedy output repeats one token for most prompts: too weak a check"


def test_config_and_files(exported) -> None:
    tied = json.loads((exported["baseline"][1] / "config.json").read_text())
    untied = json.loads((exported["untied"][1] / "config.json").read_text())
    assert (tied["tie_word_embeddings"], untied["tie_word_embeddings"]) == (True, False)
    assert (tied["activation_function"], untied["activation_function"]) == ("gelu_new", "gelu")
    assert (tied["layer_norm_epsilon"], untied["layer_norm_epsilon"]) == (1e-5, 1e-6)
    assert tied["n_inner"] == 4 * tied["n_embd"] and tied["bos_token_id"] is None
    from safetensors import safe_open
    with safe_open(exported["untied"][1] / "model.safetensors", "pt") as f:
        assert "lm_head.weight" in f.keys()
        assert f.get_tensor("transformer.h.0.attn.c_attn.weight").shape == (32, 96)  # Conv1D: (in, out)
    folder = exported["baseline"][1]
    assert "lab_tokenizer.json" in (folder / "README.md").read_text()
    assert json.loads((folder / "lab_tokenizer.json").read_text())["name"] == "char"


def test_char_tokenizer_loads_in_transformers(exported) -> None:
    run_dir, folder = exported["baseline"]
    _, ours, _ = load_run(run_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    text = "def f(x):\n    return x  # a comment\n\nclass A: pass"
    assert theirs.encode(text) == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == text
    with pytest.raises(Exception):  # no unknown token: an unseen character fails, as in the lab
        theirs.encode("\u00e9\u00e9")


def test_unsupported_components_are_named(exported, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(exported["baseline"][0], run_dir)
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    spec["model"]["block"] = {"name": "post"}
    spec["model"]["feedforward"] = {"name": "swiglu", "mult": 8 / 3}
    spec["model"]["norm"] = {"name": "layernorm", "eps": 1e-5, "bias": False}
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert export.main([str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for expected in ("model.block = 'post'", "supports model.block: pre", "model.feedforward = 'swiglu'",
                     "model.norm.bias = False", "layernorm (bias: true)"):
        assert expected in err
    assert not out.exists()


@pytest.mark.parametrize("model, problem", [
    ({"positional": "rope"}, "model.positional = 'rope'"),
    ({"attention": {"name": "grouped_query", "n_kv_heads": 2}}, "model.attention = 'grouped_query'"),
    ({"norm": {"name": "rmsnorm", "eps": 1e-6}}, "model.norm = 'rmsnorm'"),
    ({"head": {"name": "tied", "scale": 2}}, "model.head.scale = 2"),   # an option export does not know
    ({"attention": {"name": "multi_head", "impl": "naive"}}, None),
    ({"feedforward": {"name": "gelu_mlp", "mult": 2.0, "approximate": "none"}}, None),
])
def test_export_problems(model: dict, problem: str | None) -> None:
    base = {"positional": "learned", "attention": "multi_head", "norm": "layernorm", "block": "pre",
            "feedforward": "gelu_mlp", "head": "untied"}
    problems = hf_export.export_problems(base | model)
    assert (problem is None and problems == []) or (len(problems) == 1 and problem in problems[0])


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_tokenizer_loads_in_transformers(tmp_path: Path, name: str) -> None:
    # No run needed: the writer sees the lab tokenizer and a folder holding its tokenizer.json.
    from registry import TOKENIZER, load_all

    load_all()
    ours = TOKENIZER.build(name)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tokenizer.json").write_text(json.dumps(ours.spec()))
    note = hf_export.write_tokenizer(tmp_path, ours, tmp_path / "run", 1024)
    assert "AutoTokenizer" in note
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello world, it's 2024!\n\n  indented\tcode() -> 'x' caf\u00e9 \U0001F600 \x00\x7f\u00ad"
    assert theirs.encode(text) == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == text


# -- an --out that cannot be written: one line, exit 1 (as experiments.run's results folder), nothing left ---
def export_fails(run_dir: Path, out: Path, capsys) -> str:
    assert export.main([str(run_dir), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: cannot write the export to ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_immutable_out_is_one_line(exported, tmp_path: Path, capsys) -> None:
    import subprocess

    out = tmp_path / "locked"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root and a file system that supports it")
    try:
        for target in (out, out / "sub" / "deeper"):
            err = export_fails(exported["baseline"][0], target, capsys)
            assert f"'{target}'" in err and "the operation is not permitted" in err and "pass --out" in err
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


def test_file_in_the_out_path_is_one_line(exported, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    err = export_fails(exported["baseline"][0], tmp_path / "file" / "out", capsys)
    assert "a part of the path is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_write_leaves_nothing_half_written(exported, tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    run_dir, earlier = exported["baseline"]
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}

    def full_disk(out: Path, *args) -> str:  # config.json and model.safetensors are written by now
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "tokenizer.json"))

    monkeypatch.setattr(hf_export, "write_tokenizer", full_disk)
    new = tmp_path / "new" / "hf"
    err = export_fails(run_dir, new, capsys)
    assert "no space is left on the disk" in err and f"({new / 'tokenizer.json'})" in err and "free some space" in err
    assert not (tmp_path / "new").exists()                       # the folders it made are gone again
    export_fails(run_dir, earlier, capsys)                         # over an earlier export: that one stays whole
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


# -- an --out that holds someone else's files: refused, nothing replaced ---------------------------
def test_an_out_holding_files_no_export_wrote_is_refused_and_left_as_it_was(exported, tmp_path: Path, capsys,
                                                                            monkeypatch) -> None:
    run_dir, earlier = exported["baseline"]
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("the project's own\n")
    for out in ([str(project)], []):  # a folder with a README of its own; an empty --out is the current one
        monkeypatch.chdir(project)
        assert export.main([str(run_dir), "--out", *(out or [""])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out ") and "Traceback" not in err
        assert ("already holds README.md, which no export of this lab wrote" in err if out else "--out is empty" in err)
        assert sorted(p.name for p in project.iterdir()) == ["README.md"]
        assert (project / "README.md").read_text() == "the project's own\n"
    for lab_folder in (run_dir, run_dir.parent.parent):  # a run's folder, an experiment's
        before = sorted(p.name for p in lab_folder.iterdir())
        assert export.main([str(run_dir), "--out", str(lab_folder)]) == 2
        assert "is a folder of the lab's results" in capsys.readouterr().err
        assert sorted(p.name for p in lab_folder.iterdir()) == before
    assert export.main([str(run_dir), "--out", str(earlier)]) == 0  # an earlier export's folder: ours to replace
    assert (earlier / hf_export.MARK).is_file()
    (earlier / hf_export.MARK).unlink()                              # one made before exports were marked
    assert export.main([str(run_dir), "--out", str(earlier)]) == 0 and (earlier / hf_export.MARK).is_file()


def test_a_runs_file_given_for_its_folder_is_named_a_file(exported, tmp_path: Path, capsys) -> None:
    summary = exported["baseline"][0] / "summary.json"
    assert export.main([str(summary), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {str(summary)!r} is a file, not a run folder") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_export_cut_short_while_publishing_cannot_be_loaded_and_is_redone_whole(exported, tmp_path: Path,
                                                                                   capsys, monkeypatch) -> None:
    """One run's card and tokenizer beside another's weights that still load: what a kill between the renames
    left. Now config.json (without which nothing loads the folder) goes first and comes back last, the mark
    says the folder is incomplete until then, and the next export clears a killed one's staging folder."""
    (a, _), (b, _) = exported["baseline"], exported["untied"]
    out = tmp_path / "out"
    assert export.main([str(a), "--out", str(out)]) == 0
    (out / ".export.dead.tmp").mkdir()                   # a kill -9 during an earlier export's writes
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    files.write_json(out / ".export.dead.tmp" / files.OWNER, {"host": socket.gethostname(),
                                                              "pid_ns": files.pid_namespace(), "pid": int(ended.stdout)})
    renames = []
    real = hf_export.os.replace

    def cut_short(src, dst):  # the third rename into --out: the incomplete mark, one file, then this
        renames.append(dst) if Path(dst).parent == out else None
        if len(renames) == 3 and Path(dst).parent == out:
            raise OSError(5, "Input/output error", str(dst))
        real(src, dst)
    monkeypatch.setattr(hf_export.os, "replace", cut_short)
    assert export.main([str(b), "--out", str(out)]) == 1
    assert "The export there is incomplete (no config.json: nothing loads it)" in capsys.readouterr().err
    assert not (out / "config.json").exists() and json.loads((out / hf_export.MARK).read_text()) == {"complete": False}
    with pytest.raises((OSError, RuntimeError, ValueError)):  # it does not load as some model
        transformers.GPT2LMHeadModel.from_pretrained(out)
    monkeypatch.setattr(hf_export.os, "replace", real)
    assert export.main([str(b), "--out", str(out)]) == 0
    assert json.loads((out / hf_export.MARK).read_text())["complete"] is True
    assert not list(out.glob(".export.*.tmp")) and (out / "config.json").is_file()
