"""Classification heads on cached features: logistic regression, a small MLP, kNN, metrics.

Nothing here imports jax, flax or scikit-learn at package import; each module imports what it
needs inside its functions or at its own top (the stage imports these modules inside `run`).
"""
