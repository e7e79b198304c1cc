"""MLflow pyfunc wrapper (models-from-code, so nothing is pickled).

    model = mlflow.pyfunc.load_model("models:/dinoar@champion")
    model.predict(pd.DataFrame({"bytes": [open("x.png", "rb").read()]}))

Returns score, is_anomalous, status and error per row. Batch jobs use dinoar_ray.score instead.
"""
import mlflow
import pandas as pd


class DinoARPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dinoar_ray.package import ModelPackage
        from dinoar_ray.score import ImageScorer

        self.scorer = ImageScorer(ModelPackage.load(context.artifacts["package"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        result = self.scorer.score_bytes(list(model_input["bytes"]))
        return pd.DataFrame({k: result[k] for k in ("score", "is_anomalous", "status", "error")})


mlflow.models.set_model(DinoARPyfunc())
