"""Images: bytes to pixels, the same way for training, evaluation and scoring.

``decoding`` holds the one preprocessing definition (decode, size limits, tiling a large photo, masks as
arrays and PNGs); ``augmentation`` the training-only presets (flips, turns, zoom, degradations);
``drawing`` crack lines over photos. Imports only the core modules.
"""
