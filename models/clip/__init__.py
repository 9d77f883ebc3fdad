"""CLIP training side: the open_clip-compatible model and its training. Serving side: serving/clip/."""
