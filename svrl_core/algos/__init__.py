"""Learning algorithms: SFT and GRPO."""
