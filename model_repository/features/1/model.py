"""features: validates a `recommend` request and turns its events into CoT tokens and padded histories."""

from models.pipeline import validate_and_featurize
from models.tokenizer import ItemTokenizer

from exporters.python_backend import StepModel


class TritonPythonModel(StepModel):
    INPUTS = ("item_ids", "behaviors", "timestamps", "k")
    OPTIONAL_INPUTS = ("exclude_item_ids", "category_ids")

    def setup(self):
        self.tokenizer = ItemTokenizer.load(self.version_dir / "tokenizer.npz")

    def run(self, item_ids, behaviors, timestamps, k, exclude_item_ids=None, category_ids=None):
        f = validate_and_featurize(self.tokenizer, self.limits, item_ids, behaviors, timestamps, k,
                                   exclude_item_ids, category_ids)
        return {"enc_tokens": f.enc_tokens, "hist_items": f.hist_items, "hist_behaviors": f.hist_behaviors,
                "exclude_ids": f.exclude_ids, "allowed_categories": f.allowed_categories}
