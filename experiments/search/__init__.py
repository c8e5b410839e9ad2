"""Optuna search over any spec field, and grids split among many workers through one Optuna study.

A ``search:`` block in a spec hands the space to Optuna instead of a grid::

    search:
      trials: 20                 # finished trials wanted (COMPLETE + PRUNED; see "Counting")
      metric: val_bpb            # a summary metric (table below); the trial's value = mean over the seeds
      direction: minimize        # minimize | maximize
      sampler: tpe               # tpe | random | grid; seeded with the spec's first seed
      pruner: median             # median | hyperband | none (default: median when the metric has a
                                 #   per-evaluation counterpart, else none)
      storage: null              # default sqlite:///<results>/<experiment>/study.db; any SQLAlchemy URL
                                 #   (--storage on the command line overrides it)
      space:
        model.n_heads: [1, 2, 4, 8]                   # list -> categorical (any values, component names
                                                      #   and {name: ..., option: ...} included)
        model.n_layers: {int: [1, 6]}                 # integers in [1, 6]; optional step, log
        train.lr: {float: [1.0e-4, 3.0e-3], log: true}  # optional step (not with log)

Every space key is a dotted spec key (``section.field`` or ``model.<component>.<option>``); every
value is checked before anything is built, categorical component names through their registry.

Metrics (``search.metric`` -> the summary.json key that gives a run's value -> the metrics.csv column
reported to the pruner at every evaluation):

    val_bpb, final_val_bpb      -> final_val_bpb     (val_bpb)
    val_loss, final_val_loss    -> final_val_loss    (val_loss)
    train_loss, final_train_loss-> final_train_loss  (train_loss)
    best_val_bpb / best_val_loss-> best_val_bpb / best_val_loss (val_bpb / val_loss)
    tokens_per_s, wall_s, train_s, params, flops_per_token -> the same key (no pruning)

Trials. Each trial is one run per spec seed (``Spec.runs_for``) in the ordinary results layout; its
value is the mean of the metric over the seeds. Intermediate values of the *first* seed are reported
at every evaluation after step 0 (so every trial's curve is on the same seed and batches) and the
pruner may stop that run there (status ``pruned``; the median pruner waits for a third of the steps
and for a few finished trials); the other seeds run only when the first was not pruned. A
combination the spec rules forbid (``d_model % n_heads``, a context longer than the data) is told to
Optuna as PRUNED with the reason in the user attribute ``invalid``; a diverged run makes its trial
PRUNED (``diverged``); a run that crashes makes its trial FAIL (``error``). Trials with the
same parameters share run ids, so a repeated point is never trained twice. Keys that change the
scored text (data.corpus, data.val_fraction, data.test_fraction; data.tokenizer for a per-token loss;
train.eval_batches, model.context_length, data.tokenizer and a preset that changes the context for a metric
read off the periodic evaluations' sampled windows) are refused (space.py).

Finite spaces (every axis categorical or integer). ``trials`` is capped at the number of points (a
warning says so). A point proposed again is a repeat: it trains nothing (a pruned point stays
pruned), carries ``repeat_of``, is told FAIL (out of the sampler's history), does not count, and makes the
worker queue an untried point so repeats cannot spin; a point an earlier RUNNING trial holds is
surplus and also queues an untried one. Before anything is written, the points are checked against
the spec rules (plan.check_points): a space with no valid point is refused.

Counting. ``trials`` counts finished trials: COMPLETE and PRUNED (invalid and diverged points
included, so a space full of invalid points still ends; on a finite space the distinct points,
repeats never). FAIL trials do not count: a crashed trial is replaced by a new one, and a worker
gives up with exit 1 once as many trials failed in this invocation as ``trials`` asks for. Rerunning
the same command resumes the study up to ``trials``; when every finished trial was invalid the
command exits 1. The last lines add the best trial's held-out test score (mean and sd over its seeds; the
report gives its interval).

Workers. ``--workers N`` starts N local worker processes on one study (``OMP_NUM_THREADS`` split
among them); ``--storage URL`` lets workers on other machines join (each runs the same command).
A worker records a heartbeat every ``LAB_SEARCH_HEARTBEAT_S`` seconds (default 10; "I" or "I,G" to
set the grace period G, default 3 I); a RUNNING trial whose heartbeat is older than the grace period
is failed by the next worker that looks and retried once with the same parameters, so it resumes
the dead worker's runs from their checkpoints (the run locks are flocks, freed with their process).
With ``--storage`` (or ``--workers``), a grid spec without a search block runs the same way: one
trial per grid point (all its seeds) through Optuna's GridSampler, so many workers split one grid.
The sampler is seeded with the spec's first seed for a fresh study and one worker (reproducible);
otherwise the seed mixes in the worker's index (host and pid for workers that join a ``--storage``
study) and the number of trials already in the study, so a rerun never replays earlier draws.

Records. experiment.json's ``runs`` is re-derived from the study after every trial (each trial
holds its run ids in the user attribute ``run_ids``), with ``trial`` and ``state`` per run, so
runs.csv gains those columns; its ``search`` holds storage, study_name, metric (the summary key)
and direction for the analysis. ``trials.log`` in the experiment folder is an append-only JSON-lines
log of every run a worker started and how it ended (who trained what, where).

Modules: space.py (the block's checks, Params, the metric list; no Optuna), study.py (storage,
sampler, pruner, heartbeat), plan.py (the search and grid forms of a plan), worker.py (the trial
loop), trials.py (experiment.json, runs.csv and trials.log from the study), cli.py (the command).
"""
