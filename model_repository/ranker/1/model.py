"""ranker: the ONNX CTR model; all queued requests are scored in one ONNX Runtime call."""

import numpy as np

from exporters.python_backend import StepModel, session


class TritonPythonModel(StepModel):
    INPUTS = ("hist_items", "hist_behaviors", "cand_items")

    def setup(self):
        self.session = session(self.version_dir / "ranker.onnx")

    def run_batch(self, batch):
        feeds = {name: np.stack([inputs[name] for inputs in batch]).astype(np.int64) for name in self.INPUTS}
        logits = self.session.run(None, feeds)[0]
        return [{"logits": row} for row in logits]

    def run(self, **inputs):
        return self.run_batch([inputs])[0]
