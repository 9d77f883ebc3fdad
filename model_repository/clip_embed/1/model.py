"""clip_embed: CLIP embeddings of images and/or texts (new creatives, items). A request carries a batch of
rows, each with an image, a text, or both (then the normalised mean, the creative embedding); all rows of
all queued requests go through the image and text towers in one ONNX Runtime call each."""

import numpy as np

from exporters.clip_export import OnnxClipEmbedder
from exporters.python_backend import StepModel
from models.pipeline import RequestError

MAX_TEXT_BYTES = 1024


class TritonPythonModel(StepModel):
    OPTIONAL_INPUTS = ("image", "text")
    ROWS_ARE_BATCH = True

    def setup(self):
        self.embedder = OnnxClipEmbedder(self.version_dir)
        self.resolution = int(self.embedder.manifest["image_resolution"])

    def _read(self, request):
        """Rows may be many (unlike the per-user models): the batch dimension is the number of creatives."""
        inputs = {}
        for name in self.OPTIONAL_INPUTS:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        if not inputs:
            raise RequestError("image/text", "at least one of image or text is required")
        rows = {name: len(value) for name, value in inputs.items()}
        if len(set(rows.values())) != 1:
            raise RequestError("image/text", f"image and text must have the same number of rows, got {rows}")
        if "text" in inputs:
            texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                     for t in inputs["text"].reshape(len(inputs["text"]), -1)[:, 0]]
            long = [len(t.encode()) for t in texts if len(t.encode()) > MAX_TEXT_BYTES]
            if long:
                raise RequestError("text", f"a text has {long[0]} bytes; the maximum is {MAX_TEXT_BYTES}")
            inputs["text"] = texts
        return inputs

    def run_batch(self, batch):
        images = [b["image"] for b in batch if "image" in b]
        texts = [t for b in batch if "text" in b for t in b["text"]]
        image_emb = self.embedder.embed_images(np.concatenate(images)) if images else None
        text_emb = self.embedder.embed_texts(texts) if texts else None
        results, i, t = [], 0, 0
        for b in batch:
            parts = []
            if "image" in b:
                n = len(b["image"])
                parts.append(image_emb[i:i + n])
                i += n
            if "text" in b:
                n = len(b["text"])
                parts.append(text_emb[t:t + n])
                t += n
            emb = parts[0] if len(parts) == 1 else parts[0] + parts[1]
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            results.append({"embedding": emb.astype(np.float32)})
        return results

    def run(self, **inputs):
        return self.run_batch([inputs])[0]
