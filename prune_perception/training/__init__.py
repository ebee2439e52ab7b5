"""Loss, training loop, EMA."""
