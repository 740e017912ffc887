"""Data: labelled trees in storage, turned into the images and crops a model learns from.

``trees`` finds labelled images (``<root>/<label>/...``) and image/mask pairs; ``splits`` groups them (by folder,
by photo) and assigns each group to train, validation or test; ``loading`` reads, hashes and decodes them once
with Ray Data and hands each split on. Imports the core, ``storage`` and ``images``; nothing here knows about the
network.
"""
