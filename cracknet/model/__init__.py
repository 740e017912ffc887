"""The model: the network, its mask decoder, the precision it runs at, and the card that describes it.

``network`` builds ResNet50 with a crack head, loads starting weights and the trained artifact; ``masks`` the
crack-mask decoder and its loss; ``precision`` the device and dtype policy shared by training and scoring;
``card`` the ``model.json`` format (reading it, also through a ``models:/`` registry URI). Imports the core,
``storage``, ``registry``, ``images``, ``data`` and ``measure``.
"""
