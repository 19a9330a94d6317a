"""The run report: read the stages' outputs, draw plots, render one HTML page and a Markdown twin.

`readers` turns each stage's output folder into plain data (tolerant of missing files),
`plots` draws matplotlib PNGs, `document` holds the page model and its two renderers, and
`sections` builds the page from the readers. Nothing here imports jax or tensorflow.
"""
