"""cracknet: find cracks in photos of concrete and infrastructure.

    import cracknet
    model = cracknet.load_model("runs/demo")          # a model folder, local or s3://
    for p in model.predict(["wall.jpg", pil_image, uint8_array]):
        print(p.source, p.crack_probability, p.is_crack)

Importing the package does nothing but define names (torch is imported by
``load_model``); the command line (`cracknet ...`) and the Ray job entrypoints in
`jobs/` do all set-up.
"""

from cracknet.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(uri: str, **options):
    """The model at ``uri``, scoring exactly as the nightly job does; see ``cracknet.predict.scorer.Scorer``."""
    from cracknet.predict.scorer import load_model as _load

    return _load(uri, **options)
