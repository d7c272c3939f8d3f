"""The evaluation family: judging examples and saying what the numbers mean.

- `scoring`: p(yes) per example (score or decode mode, animated images), the
  EvalResult with its confusion matrix, scores and intervals;
- `reports`: Result blocks over named sets, the picked threshold, galleries;
- `thresholds`: picking a threshold on one split for a target;
- `stats`: intervals, paired tests and spreads (no jax);
- `compare`: two models on the same examples (17-compare.py, the lottery);
- `gallery`: HTML pages of errors and of the duplicate audit;
- `probe`: the linear probe on the frozen encoder's embeddings;
- `ensemble`: what judges (a model, an ensemble of checkpoints, a probe);
- `prompts`: ranking candidate prompts (05-rank_prompts.py).

Nothing is imported here: `configs` (jax-free) reads `thresholds` without the rest.
"""
