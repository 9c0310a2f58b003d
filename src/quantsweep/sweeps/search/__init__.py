"""The smallest configuration that clears an accuracy floor, found with an Optuna study.

`sweeper` runs the loop (ask → launch → tell); `plan` checks and derives everything before any work;
`space` is what is swept; `objectives` and `samplers` are the registries `search.objective` and
`search.sampler` name; `study` opens and resumes the study; `fidelity` judges a trial's two evaluations;
`decisions` holds the rules on numbers; `report` and `plot` tell the answer.
"""
