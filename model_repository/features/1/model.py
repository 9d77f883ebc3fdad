"""features: validates a `recommend` request and turns its events into CoT tokens with journey ids and
positions, plus padded histories for the ranker."""

from models.grace_inputs import HistoryEncoder
from models.pipeline import validate_and_featurize

from exporters.python_backend import StepModel


class TritonPythonModel(StepModel):
    INPUTS = ("item_ids", "behaviors", "timestamps", "k")
    OPTIONAL_INPUTS = ("exclude_item_ids", "category_ids")

    def setup(self):
        self.history_encoder = HistoryEncoder.load(self.version_dir)

    def run(self, item_ids, behaviors, timestamps, k, exclude_item_ids=None, category_ids=None):
        f = validate_and_featurize(self.history_encoder, self.limits, item_ids, behaviors, timestamps, k,
                                   exclude_item_ids, category_ids)
        return {"enc_tokens": f.enc_tokens, "enc_journey_ids": f.enc_journey_ids,
                "enc_journey_pos": f.enc_journey_pos, "hist_items": f.hist_items,
                "hist_behaviors": f.hist_behaviors, "exclude_ids": f.exclude_ids,
                "allowed_categories": f.allowed_categories}
