"""The MLflow pyfunc model of recsys, logged "from code" (MLflow's models-from-code).

`MlflowTracker` logs this file as ``python_model``: MLflow copies it into the logged model and,
when the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models serve``), runs it to get
the model. Nothing is pickled when logging, and nothing is unpickled when loading.

This file imports mlflow at top level: the one exception to recsys/tracking/mlflow.py being the
only such module, because models-from-code needs ``mlflow.models.set_model`` to run when the file
does. recsys itself never imports it; only MLflow runs it, while loading a model.
"""

import mlflow

from recsys.tracking.mlflow import RecsysPyfuncModel

mlflow.models.set_model(RecsysPyfuncModel())
