"""How big a model is: formulas from its config, bytes measured on disk, bytes predicted before quantizing."""
