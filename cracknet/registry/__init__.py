"""The registry: MLflow, where model versions, aliases and ``models:/`` URIs live.

``mlflow_client`` is the one bounded, redacting client; ``versions`` registers versions and resolves
``models:/name@alias`` to the artifact's folder. Imports only the core modules and ``storage`` (reading the
card behind a version is ``model.card``'s job).
"""
