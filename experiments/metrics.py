"""The names of what a run measures, written once: the columns of metrics.csv, the metrics of
summary.json, and their units. Training writes them, the runner and the search read them, the
analysis tables them."""
from __future__ import annotations

from typing import Any

# metrics.csv: one row per evaluation
STEP, TOKENS, LR, ELAPSED = "step", "tokens", "lr", "elapsed_s"
BYTES, FLOPS = "bytes", "flops"            # training text (UTF-8 bytes of the targets) and FLOPs so far
TRAIN_LOSS, VAL_LOSS, VAL_BPB, TRAIN_BPB = "train_loss", "val_loss", "val_bpb", "train_bpb"
EVAL_COLUMNS = [STEP, TOKENS, BYTES, FLOPS, LR, TRAIN_LOSS, VAL_LOSS, VAL_BPB, TRAIN_BPB, ELAPSED]
SEEN = (TOKENS, BYTES, FLOPS)              # what a budget counts, and the x-axes of the curves
CURVES = (VAL_BPB, VAL_LOSS, TRAIN_LOSS)   # measured at every evaluation


def final(metric: str) -> str:
    """summary.json's key for a curve's value at the last evaluation."""
    return f"final_{metric}"


def best(metric: str) -> str:
    """summary.json's key for a curve's value at the evaluation with the lowest val loss."""
    return f"best_{metric}"


# summary.json
FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, FINAL_VAL_BPB = final(TRAIN_LOSS), final(VAL_LOSS), final(VAL_BPB)
BEST_VAL_LOSS, BEST_VAL_BPB = best(VAL_LOSS), best(VAL_BPB)
PARAMS, FLOPS_PER_TOKEN, TOKENS_SEEN = "params", "flops_per_token", "tokens_seen"
BYTES_SEEN, FLOPS_SEEN = "bytes_seen", "flops_seen"   # the exact bytes of the targets trained on; tokens x FLOPs/token
TOKENS_PER_S, WALL_S, TRAIN_S = "tokens_per_s", "wall_s", "train_s"
LOSSES = (FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, FINAL_VAL_BPB, BEST_VAL_LOSS, BEST_VAL_BPB)
# Scored on the periodic evaluations' sampled windows (a finished run's final_val_* score the whole validation text)
SAMPLED = (FINAL_TRAIN_LOSS, BEST_VAL_LOSS, BEST_VAL_BPB)
COSTS = (PARAMS, FLOPS_PER_TOKEN, TOKENS_SEEN, BYTES_SEEN, FLOPS_SEEN, TOKENS_PER_S, WALL_S)

UNITS = {FINAL_VAL_LOSS: "nats/token", FINAL_VAL_BPB: "bits/byte", VAL_LOSS: "nats/token", VAL_BPB: "bits/byte"}
LABELS = {FINAL_VAL_LOSS: "final val loss", FINAL_VAL_BPB: "final val bpb", VAL_LOSS: "val loss", VAL_BPB: "val bpb"}

# The training rules a run followed, versioned: what its numbers mean beyond its spec. A change that
# moves a run's scores or curves for the same spec adds a version; summary.json and checkpoints record
# it (a summary without it is version 1), so runs under different rules are not compared unawares.
TRAINING_RULES = "training_rules"
RULES_VERSION = 2
RULES_CHANGES = {2: "the learning rate ends on min_lr at the last step (one step short before), and the periodic "
                    "evaluations score eval_batches x 32 windows whatever the batch size (eval_batches batches of "
                    "the run's own batch before)"}


def rules_version(recorded: Any) -> int:
    """A summary's recorded rules version as a number: one recorded before versions were (none, NaN) is 1."""
    return 1 if recorded is None or recorded != recorded else int(recorded)


def rules_note(recorded: dict[str, Any]) -> str | None:
    """A warning when finished runs (name -> the rules version its summary records) followed different
    training rules: which ones differ from this code's, what changed, and what to do; None when they all
    followed the same rules."""
    versions = {name: rules_version(v) for name, v in recorded.items()}
    older = sorted(name for name, v in versions.items() if v != RULES_VERSION)
    if len(set(versions.values())) < 2:
        return None
    olds = sorted({versions[name] for name in older})
    changes = "; ".join(f"in v{v}, {text}" for v, text in RULES_CHANGES.items() if v > olds[0]) or (
        "unknown to this code, which is older than the runs")
    return (f"{len(older)} of {len(versions)} finished run(s) followed the lab's training rules "
            f"{', '.join(f'v{v}' for v in olds)}, not this code's v{RULES_VERSION}: {', '.join(older[:6])}"
            f"{' ...' if len(older) > 6 else ''}. What changed: {changes}. Runs under different rules differ "
            f"by more than their components: retrain the older ones (`python -m experiments.run SPEC --force "
            "--only <run id or variant>`), or give this code's runs an experiment name of their own")
