"""Fine-tuning the top of the backbone on cached trunk activations: augmented views (`views`), the
optax training loop (`train`) and the fine-tuned classifier read back for the gradient stages
(`model`). The stages are `stages/trunk.py` and `stages/finetune.py`."""
