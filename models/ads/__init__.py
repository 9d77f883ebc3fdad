"""Ads training side: LLM-HYPER cold-start weights, the LLM client and training-side CTR features. Serving
side: serving/ads/."""
