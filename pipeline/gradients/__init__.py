"""Gradients with respect to the input image: the machinery of the `ideal` and `adversarial` stages.

Modules, one job each:
  model             pixel-space classifiers (backbone + ImageNet head or a trained head), group
                    log-probabilities
  targets           target/source spec strings -> class index groups (stdlib only)
  parameterization  pixel and decorrelated-Fourier image parameterisations
  transforms        random shift/zoom/rotation inside jit
  regularizers      total variation, L2
  ideal             the jitted, scanned ideal-image optimiser (all targets in one batch)
  attacks           FGSM / PGD / unbounded attacks finished on the uint8 grid, distortion metrics
  pictures          PNG output: images, grids, amplified perturbations
  ideal_artifact    the ideal stage's output (ideal.json): its type, `write`, `read`
  attack_artifact   the adversarial stage's output (metrics.json): its type, `write`, `read`
"""
