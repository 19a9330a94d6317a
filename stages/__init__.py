"""The product's stages, in order. Each name is a module here that defines `STAGE`."""

STAGES = ["data", "features", "doctor", "heads", "trunk", "finetune", "inspect", "ideal", "adversarial", "report"]
