"""Use cases, each written once: what a command, a pipeline or a notebook asks recsys to do.

The faces (``recsys.cli`` / ``recsys.commands``, ``pipelines/``) parse their arguments into
plain values and validated options and make one call here; the core below (data, models,
training, evaluation, scoring) knows neither argparse nor mlflow, and ``recsys.tracking`` is the
only package that imports mlflow.
"""
