"""Training: data-parallel ResNet50 fine-tuning on Ray Train, ending in a self-describing model artifact.

``config`` is its settings; ``driver`` resolves them, splits the data, runs Ray Train, tests and writes the
artifact; ``worker`` is what each Ray Train worker runs (resume, epochs, checkpoints); ``epoch`` is one epoch as
a plain function, where a training image meets its gradient step; ``checkpoint`` saves and restores;
``card_writer`` fills in the card; ``tracking`` logs the run to MLflow. Imports ``report`` and everything below.
"""
