"""The training stages of the recipe: pretrain, then SFT, reward model, PPO."""
