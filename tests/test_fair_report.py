"""The report's budget section (what the budget held equal and what it did not) and a search's best
trial scored on the test text beside its selection score."""
from __future__ import annotations

from pathlib import Path

import pytest

from analysis.plots import PlotSet
from analysis.report import build_report
from analysis.tables import load_experiment
from synthetic import BYTES_PER_TOKEN, TOKENS_PER_STEP, Run, build_experiment

TOKENS = 400 * TOKENS_PER_STEP     # synthetic runs end at step 400


def tokenizer_runs(budget: dict, equal_bytes: bool) -> list[Run]:
    runs = []
    for tok in ("char", "gpt2"):
        tokens = TOKENS / BYTES_PER_TOKEN[tok] if equal_bytes else TOKENS
        for seed in range(3):
            runs.append(Run(f"tokenizer={tok}", seed, 1.5, axes={"data.tokenizer": tok}, tokenizer=tok,
                            summary={"tokens_seen": tokens, "bytes_seen": tokens * BYTES_PER_TOKEN[tok],
                                     "flops_seen": tokens * 600_000}))
    return runs


def test_a_token_budget_over_two_tokenizers_is_called_unequal_text(tmp_path: Path) -> None:
    exp = load_experiment(build_experiment(tmp_path, "tok", tokenizer_runs({"tokens": TOKENS}, False),
                                           axes=["data.tokenizer"], plan={"budget": {"tokens": TOKENS}}))
    text = build_report(exp, PlotSet())
    budget = text.split("## Budget")[1].split("## ")[0]
    assert "the curves are drawn against **tokens seen**, the budget's unit" in budget
    assert "**Not at equal text.**" in budget and "(4.00×)" in budget and "{bytes: N}" in budget
    assert "Not at equal compute" not in budget  # the synthetic runs share one FLOPs per token


def test_a_bytes_budget_over_two_tokenizers_is_equal_text(tmp_path: Path) -> None:
    exp = load_experiment(build_experiment(tmp_path, "bytes", tokenizer_runs({"bytes": TOKENS}, True),
                                           axes=["data.tokenizer"], plan={"budget": {"bytes": TOKENS}}))
    budget = build_report(exp, PlotSet()).split("## Budget")[1].split("## ")[0]
    assert "drawn against **bytes of training text seen**" in budget
    assert "Not at equal text" not in budget and "**Not at equal compute.**" in budget


@pytest.mark.parametrize("warmups, named", [((20, 20), True), ((15, 4), False)])
def test_a_flops_budget_that_gives_a_warm_up_in_steps_unequal_shares_says_so(tmp_path: Path, warmups, named) -> None:
    runs = [Run(f"model.d_model={d}", seed, 1.5, axes={"model.d_model": d}, planned={"steps": steps, "warmup": w})
            for d, steps, w in ((32, 152, warmups[0]), (64, 44, warmups[1])) for seed in range(2)]
    exp = load_experiment(build_experiment(tmp_path, "w", runs, axes=["model.d_model"],
                                           plan={"budget": {"flops": 2e9}}))
    budget = build_report(exp, PlotSet()).split("## Budget")[1].split("## ")[0]
    assert ("**Not at equal warm-up.** The variants warmed up for 13.2% (model.d_model=32) to 45.5% "
            "(model.d_model=64) of their steps" in budget) == named


def search_with_test_scores(root: Path, test: bool) -> Path:
    runs = [Run("trial-0", s, 1.50 + 0.01 * s, trial=0, summary={"final_test_bpb": 1.56 + 0.01 * s} if test else {})
            for s in (0, 1)]
    runs += [Run("trial-1", s, 1.40 + 0.01 * s, trial=1, summary={"final_test_bpb": 1.47 + 0.01 * s} if test else {})
             for s in (0, 1)]
    return build_experiment(root, "s", runs, search={"storage": "sqlite:///none.db", "study_name": "s",
                                                     "metric": "final_val_bpb", "direction": "minimize"})


def test_a_searchs_best_trial_is_shown_on_the_test_text_beside_its_selection_score(tmp_path: Path) -> None:
    text = build_report(load_experiment(search_with_test_scores(tmp_path, test=True)), PlotSet())
    search = text.split("## Search")[1]
    assert "Best trial: **#1**" in search
    assert "| validation (chose the trial) | final_val_bpb = 1.4050 | 2 |" in search
    assert "| test (held out) | final_test_bpb = 1.4750 | 2 |" in search


def test_without_a_test_text_the_search_says_its_score_is_optimistic(tmp_path: Path) -> None:
    text = build_report(load_experiment(search_with_test_scores(tmp_path, test=False)), PlotSet())
    assert "set `data.test_fraction` to score the best trial on text that did not choose it" in text
