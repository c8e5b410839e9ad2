"""The report's sections on fair comparisons: what the budget held equal (and what it did not), each
variant at its own best value of a tuned key, the scaling fits with their compute multipliers, and a
search's best trial on its test text. analysis/report.py puts them in the report."""
from __future__ import annotations

import math

import pandas as pd

from analysis import scaling, tuning
from analysis.markdown import ci, effects_table, si, to_markdown
from analysis.stats import mean_ci, seed_level_effect
from analysis.tables import X_AXES, Experiment, done_runs
from analysis.trials import objectives
from experiments import metrics as m

UNEQUAL = 1.05          # a spread (largest / smallest) above this is "not at equal ..."
WARMUP_SPREAD = 0.02    # warm-up shares further apart than this (2 points: more than a fraction's rounding)
BUDGET_WORDS = {"steps": "optimizer steps", "tokens": "tokens seen", "bytes": "bytes of training text seen",
                "flops": "training FLOPs", "tokens_per_param": "tokens seen per parameter"}


# ---------------------------------------------------------------------------------------------
# The budget

def _spread(done: pd.DataFrame, column: str, within: str | None) -> tuple[float, float, float]:
    """(smallest, largest, ratio) of the variants' mean `column`, within each level of `within`
    (the worst level), or over all variants."""
    worst = (math.nan, math.nan, 1.0)
    groups = done.groupby(within, sort=False) if within else [(None, done)]
    for _, group in groups:
        means = group.groupby("variant")[column].mean().dropna()
        if len(means) > 1 and means.min() > 0 and means.max() / means.min() > worst[2]:
            worst = (float(means.min()), float(means.max()), float(means.max() / means.min()))
    return worst


def budget_section(exp: Experiment) -> list[str]:
    """What each run trained for, which x-axis the curves use, and what the comparisons are not equal in."""
    kind, amount = next(iter(exp.budget.items()), ("steps", None))
    x = exp.x_axis
    if kind == "steps":
        given = f"`train.steps: {amount}`" if amount is not None else "the default `train.steps`"
        what = f"Every run trained for **{amount or 'a fixed number of'} optimizer steps** ({given})"
    else:
        what = (f"Every run trained for **{si(amount)} {BUDGET_WORDS.get(kind, kind)}** (`train.budget: "
                f"{{{kind}: {amount}}}`), each deriving its own steps from it")
    lines = ["## Budget", "", f"{what}; the curves are drawn against **{X_AXES[x]}**, the budget's unit.", ""]
    done = done_runs(exp)
    within = (exp.scale or {}).get("axis")
    notes = []
    for column, noun in ((m.BYTES_SEEN, "text"), (m.FLOPS_SEEN, "compute")):
        if column not in done.columns:
            continue
        low, high, ratio = _spread(done, column, within)
        if ratio > UNEQUAL:
            unit = "bytes of training text" if noun == "text" else "training FLOPs"
            notes.append(f"**Not at equal {noun}.** Under this budget the variants saw from {si(low)} to "
                         f"{si(high)} {unit} ({ratio:.2f}×){' at one size' if within else ''}, so a difference "
                         f"between them mixes the change itself with the {noun} it got. "
                         + _remedy(noun, kind, done))
    if kind != "steps" and (note := _warmup_note(done)):
        notes.append(note)
    if within:
        notes.append("Sizes differ by design (the scale axis): each size has its own budget, and the fits "
                     "below compare the variants at equal compute.")
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def _warmup_note(done: pd.DataFrame) -> str | None:
    """The warm-up shares of the variants' steps where a budget made them differ (a warm-up in steps)."""
    shares = done.groupby("variant")["warmup_share"].mean().dropna() if "warmup_share" in done else pd.Series()
    if len(shares) < 2 or shares.max() - shares.min() <= WARMUP_SPREAD:
        return None
    return (f"**Not at equal warm-up.** The variants warmed up for {shares.min():.1%} ({shares.idxmin()}) to "
            f"{shares.max():.1%} ({shares.idxmax()}) of their steps: the budget gave them different steps and "
            "the warm-up is a number of steps, so a difference between them mixes the change itself with its "
            "learning-rate schedule. A warm-up given as a fraction (`train.warmup: 0.1`) keeps the shares equal.")


def _remedy(noun: str, kind: str, done: pd.DataFrame) -> str:
    """Why a budget of this kind left the runs unequal in `noun`, and what would make them equal."""
    if kind == "tokens_per_param":
        return ("Each run's tokens follow its own parameter count (a variant with fewer parameters trains on "
                "fewer tokens); the fits below compare at equal compute.")
    if noun == "text" and kind == "flops":
        return ("Sizes that cost more FLOPs per token read less text for the same compute: the trade an "
                "equal-compute comparison makes on purpose.")
    if noun == "text" and done["tokenizer"].nunique() > 1:
        return ("Tokenizers cut the same text into different numbers of tokens: `train.budget: {bytes: N}` "
                "gives every run the same text.")
    if noun == "compute" and done[m.FLOPS_PER_TOKEN].nunique() > 1:
        return ("Sizes (and vocabularies) cost different FLOPs per token: `train.budget: {flops: N}` gives "
                "every run the same compute.")
    return "The runs' batch sizes, contexts or steps differ."


# ---------------------------------------------------------------------------------------------
# tune: each variant at its best value

HONEST = ("How this is kept honest. A score of the runs that made a choice is optimistic: among several "
          "values the one picked is partly the one whose noise was favourable. So no compared score is "
          "scored on what chose it. {text} Seeds: runs of one seed share batches and initialisation, so a "
          "seed that favoured a value on one text favours it on any; each seed's score is therefore its run "
          "at the value chosen on the *other* seeds (leave one seed out; `stable` counts the seeds whose "
          "choice is the best value above). Δ = variant − {reference} per seed, each at its own such value. "
          "Those Δ are not independent (each seed's choice saw all the others), so p is not Student t's but "
          "a swap test's: the two variants' runs are swapped within every subset of seeds (a fixed sample of "
          "4,095 subsets beyond 12 seeds), the values chosen again and the paired t of the Δ recomputed, which "
          "is exact when the variant makes no difference; the 95% interval holds every shift of the variant's "
          "scores that test does not reject (±∞: none is rejected on that side). With n seeds the smallest p "
          "is 2/2^n (0.25 with 3 seeds, 0.0625 with 5){holm}, so a \"yes\" here needs at least {seeds} seeds. "
          "The interval is for the tuning procedure (the best of these "
          "values, chosen on the other seeds), not for one fixed value; where every choice is stable it is "
          "the comparison at the best values above.")


def tune_section(exp: Experiment) -> list[str]:
    if not exp.tune:
        return []
    key, test = exp.tune["key"], tuning.has_test(exp)
    best = tuning.best_values(exp)
    lines = [f"## Each variant at its best {key}", "",
             f"Every variant ran every value of `{key}` ({', '.join(f'`{v}`' for v in exp.levels.get(key, []))}) "
             f"with every seed. Its best value has the lowest mean final validation bpb over the seeds, among "
             "the values where every seed finished (a diverged seed rules its value out).", ""]
    table = pd.DataFrame({"variant": best["arm"], f"best {key}": best["best"].fillna("—"),
                          "n seeds": best["n"], "val bpb at best (chose it)": best["val_mean"],
                          "val 95% CI": [ci(lo, hi, n) for lo, hi, n in zip(best["val_low"], best["val_high"], best["n"])]})
    if test:
        table["test bpb at best"] = best["test_mean"]
        table["test 95% CI"] = [ci(lo, hi, n) for lo, hi, n in zip(best["test_low"], best["test_high"], best["n"])]
    table["choice stable"] = best["stable"]
    table["range"] = [f"widen the range: best at the {e} value" if e else "inside" for e in best["edge"]]
    lines += [to_markdown(table), ""]
    if test:
        lines += ["The test columns score each best value on the same seeds that chose it: text no choice saw, but "
                  "runs whose luck did, so they still lean a little toward each variant's choice; the comparison "
                  "below scores each seed at a value the other seeds chose.", ""]
    lines += [f"- **Widen the range** for {r.arm}: its best {key} is the {r.edge} value tried, so the "
              "optimum may lie beyond it." for r in best.itertuples() if r.edge]
    lines += ["", *_sensitivity_table(exp), *_tuned_comparison(exp, test)]
    return lines


def _sensitivity_table(exp: Experiment) -> list[str]:
    table = tuning.sensitivity(exp)
    if table.empty:
        return []
    cells = table.assign(text=[f"{mu:.4f} (n={n})" if n else "—" for mu, n in zip(table["mean"], table["n"])])
    pivot = cells.pivot(index="arm", columns="value", values="text").reindex(
        index=list(dict.fromkeys(table["arm"])), columns=list(dict.fromkeys(table["value"])))
    return ["Mean final validation bpb at each value (seeds finished); `plots/sensitivity.png` draws it:", "",
            to_markdown(pivot.rename_axis("variant").reset_index()), ""]


def _tuned_comparison(exp: Experiment, test: bool) -> list[str]:
    effects = tuning.tuned_effects(exp)
    if effects.empty:
        return []
    reference = tuning.arm_order(exp)[0]
    text = ("Text: every score below is on the test text (data.test_fraction), which no choice saw."
            if test else "Text: the spec holds out no test text, so the scores below are on the validation "
            "text that also chose the values, which flatters every variant a little; add "
            "`data.test_fraction` to score on text no choice saw.")
    return [f"### The variants compared, each at its own best value ({'test' if test else 'validation'} bpb)", "",
            HONEST.format(text=text, reference=reference, seeds=tuning.seeds_for_a_yes(len(effects)), holm=(
                f", and Holm's correction over the {len(effects)} variants compared multiplies it by up to "
                f"{len(effects)}" if len(effects) > 1 else "")), "", *effects_table(effects, m.FINAL_VAL_BPB)]


# ---------------------------------------------------------------------------------------------
# scale: loss against compute

def scale_section(exp: Experiment) -> list[str]:
    if not exp.scale:
        return []
    fits = scaling.scale_fits(exp)
    lines = ["## Scaling: loss against compute", "",
             f"Each variant ran at {len(exp.scale['sizes'])} sizes ("
             + "; ".join(", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in s.items()) for s in exp.scale["sizes"])
             + "). Per variant, L(C) = E + A·C^−α is fitted to its sizes' mean final validation bpb against "
             "their training FLOPs C (least squares, E, A ≥ 0).", ""]
    if fits is None or not fits.arms:
        return lines + ["No size has a finished run in every variant yet.", ""]
    rows = [_fit_row(f, fits.reference) for f in fits.arms]
    lines += [to_markdown(pd.DataFrame(rows)), ""]
    lines += [f"The **compute multiplier** of a variant is how many times more compute {fits.reference} needs "
              "to reach that variant's fitted loss at the largest compute the variant was measured at (C*): "
              "above 1 the change is worth that much compute, below 1 it costs compute, ∞ means the baseline's "
              "fit never gets there. Its 95% interval (and α's) comes from a bootstrap over seeds, the same "
              f"draw for every variant since they share their batches ({_draws(fits)}): the estimate ± "
              "t(0.975, seeds − 1)·√(n/(n−1)) bootstrap standard deviations (of the log multiplier), which for "
              "a mean over seeds is exactly the t interval of the tables above; percentiles of so few seeds "
              "are too narrow (analysis/scaling.py). The fits extrapolate beyond the sizes measured only as "
              "far as the power law holds.", ""]
    lines += [f"- {f.arm}: α reached the end of its search range ({f.law.alpha:.3g}): these sizes do not pin "
              "the exponent down." for f in fits.arms if f.law is not None and f.law.at_bound]
    lines += [f"- {f.arm}: E is at its bound, 0: these sizes show no floor yet, so its fit is a straight line "
              "on the log-log plot (α its slope)." for f in fits.arms if f.law is not None and f.law.E == 0]
    if fits.left_out:
        lines += [f"- Left out so that every variant and size has the same seeds: {fits.left_out}."]
    return lines + [""]


def _draws(fits: scaling.ScaleFits) -> str:
    n = len(fits.seeds)
    distinct = math.comb(2 * n - 1, n)
    if n < 2:
        return "one seed, so no interval"
    if fits.draws == distinct:
        return f"{n} seeds give only {distinct} distinct draws, each fitted and weighted by its probability"
    return f"{fits.draws:,} random draws of the {distinct:,} distinct ones"


def _fit_row(fit: scaling.ArmFit, reference: str) -> dict[str, str]:
    law = fit.law
    mult = "1 (the baseline)" if fit.arm == reference else _times(fit.multiplier)
    interval = ("—" if fit.arm == reference or math.isnan(fit.multiplier_ci[0])
                else f"[{_times(fit.multiplier_ci[0])}, {_times(fit.multiplier_ci[1])}]")
    if fit.never and fit.arm != reference:
        interval += f" (∞ in {fit.never:.0%} of draws)"
    return {"variant": fit.arm, "sizes": str(len(fit.sizes)),
            "α": f"{law.alpha:.3f}" if law else "—",
            "α 95% CI": f"[{fit.alpha_ci[0]:.3f}, {fit.alpha_ci[1]:.3f}]" if law and math.isfinite(fit.alpha_ci[0]) else "—",
            "E (bpb)": f"{law.E:.3f}" if law else "—", "C* (FLOPs)": si(fit.c_star),
            "fitted bpb at C*": f"{float(law.loss(fit.c_star)):.4f}" if law else "—",
            "compute multiplier": mult if law else "fewer than 3 sizes", "multiplier 95% CI": interval}


def _times(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    return "∞" if math.isinf(value) else f"{value:.2f}×"


# ---------------------------------------------------------------------------------------------
# A search's best trial on the test text

def search_test_lines(exp: Experiment, best: pd.Series, metric: str) -> list[str]:
    """The best trial's selection score beside its score on the test text (the same seeds, with the t
    interval over them), and the best minus the runner-up there, seed by seed."""
    if "_val_" not in metric:  # e.g. params, final_train_loss: nothing was chosen on the validation text
        return [f"The objective, `{metric}`, is not a score on the validation text, so it has no held-out "
                "counterpart.", ""]
    kind = metric.split("_val_", 1)[1]  # bpb or loss
    runs = done_runs(exp)
    runs = runs[runs["trial"] == best["trial"]] if "trial" in runs.columns else runs.iloc[0:0]
    test_metric = f"final_test_{kind}"
    if test_metric not in runs.columns or runs[test_metric].isna().all():
        return ["Chosen on the validation text, so the score above is optimistic; the spec holds out no test "
                "text (set `data.test_fraction` to score the best trial on text that did not choose it).", ""]
    test = mean_ci(runs[test_metric])
    rows = [("validation (chose the trial)", f"{metric} = {best['objective']:.4f}", len(runs), "")]
    if metric != f"final_val_{kind}" and f"final_val_{kind}" in runs.columns:  # best_val_*: a pick over evaluations
        rows.append(("validation, final (same runs)", f"final_val_{kind} = {runs[f'final_val_{kind}'].mean():.4f}",
                     len(runs), ""))
    rows.append(("test (held out)", f"{test_metric} = {test.mean:.4f}", test.n, ci(test.low, test.high, test.n)))
    table = pd.DataFrame(rows, columns=["text", "score", "seeds", "95% CI over seeds"])
    return (["The best trial was chosen on the validation text, so its score there is optimistic; the same runs "
             "(mean over the same seeds) on the test text, which no trial was chosen on:", "", to_markdown(table), "",
             SELECTED_RUNS, ""] + _runner_up_lines(exp, best, test_metric))


SELECTED_RUNS = ("The test text takes away the optimism of the text, not that of the runs: a run's luck in training "
                 "(its batches, its initialisation) helps it on both texts, and the trial was chosen for it. So the "
                 "test interval still leans toward the chosen trial (simulated with every trial equally good: it "
                 "covered the true score 87% of the time with 12 trials of 3 seeds, 79% with 20 trials of 5). For "
                 "a figure free of the selection, train the chosen configuration on new seeds.")


def _runner_up_lines(exp: Experiment, best: pd.Series, test_metric: str) -> list[str]:
    """Best minus the runner-up (by the objective) on the test text, paired by seed."""
    order = list(objectives(exp).index)
    if len(order) < 2:
        return []
    runner = order[1] if order[0] == best["variant"] else order[0]
    runs = done_runs(exp)
    matrix = runs[runs["variant"].isin([best["variant"], runner])].pivot_table(
        index="seed", columns="variant", values=test_metric, aggfunc="mean")
    if runner not in matrix.columns or best["variant"] not in matrix.columns:
        return []
    e = seed_level_effect((matrix[best["variant"]] - matrix[runner]).to_numpy())
    if e.n_seeds < 2:
        return []
    return [f"Best − runner-up (`{runner}`) on the test text, seed by seed: Δ = {e.mean:+.4f}, 95% CI "
            f"{ci(e.low, e.high, e.n_seeds)} over {e.n_seeds} seeds. Both were ranked on the validation scores "
            "of these same runs, and a run's luck in training helps it on both texts, so this interval leans "
            "toward the chosen trial: where it includes 0 the two are not told apart; where it excludes 0 that "
            "is weaker evidence than it looks (train the two on new seeds to compare them cleanly).", ""]
