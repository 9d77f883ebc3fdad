"""calibrate: isotonic calibration of ranker logits into pCTR, then the top-k with their sources."""

from exporters.python_backend import StepModel
from models.calibration import IsotonicCalibrator
from models.pipeline import calibrated_top_k


class TritonPythonModel(StepModel):
    INPUTS = ("logits", "cand_items", "cand_sources", "k")

    def setup(self):
        self.calibrator = IsotonicCalibrator.load(self.version_dir / "calibrator.npz")

    def run(self, logits, cand_items, cand_sources, k):
        items, pctr, sources = calibrated_top_k(logits, cand_items, cand_sources, self.calibrator, int(k[0]))
        return {"top_item_ids": items, "pctr": pctr, "retrieval_source": sources}
