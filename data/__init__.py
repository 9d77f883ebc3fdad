"""Data producers: the e-commerce simulator, the sequence-dataset format, MovieLens-100k, campaigns and
creatives."""
