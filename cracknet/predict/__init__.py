"""Predict: a trained model applied to images, one code path for every command.

``scorer`` turns images into crack probabilities (tiling large photos); ``stitching`` joins tile masks into a
photo's mask and its cracks; ``evaluate`` measures a model on a labelled tree; ``explain`` draws Grad-CAM and
crack lines; ``promote`` moves a registry alias only when the candidate is no worse. Imports ``model`` and
everything below it.
"""
