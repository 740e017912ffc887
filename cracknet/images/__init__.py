"""Images: bytes to pixels, the same way for training, evaluation and scoring.

``decoding`` holds the one preprocessing definition (decode, size limits, tiling a large photo, masks as
arrays and PNGs); ``augmentation`` the training-only presets (flips, turns, zoom, degradations);
``drawing`` crack lines over photos; ``metadata`` where and how a photo was taken (EXIF GPS, time, camera,
DJI XMP) from its header; ``scale`` millimetres per pixel from a manifest, a flag or the camera. Imports the
core modules and ``measure``.
"""
