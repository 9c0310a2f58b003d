"""quantsweep: `python run.py [overrides]` runs one combination, `python run.py -m ...` sweeps."""

import hydra
from omegaconf import DictConfig

import quantsweep.config  # noqa: F401  (registers the structured schema)
from quantsweep.cli import main as run_one
from quantsweep.outcome import Outcome


@hydra.main(version_base="1.3", config_path="src/quantsweep/conf", config_name="config")
def main(cfg: DictConfig) -> Outcome | None:
    """One combination (prints its summary, returns None), or one point of a sweep (its Outcome)."""
    return run_one(cfg)


if __name__ == "__main__":
    main()
