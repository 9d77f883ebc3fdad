"""Ads training side, built from a dataset (data.build_data.BuildData): the time split of the ad log and the
warm/cold rule (logs.py), LLM-HYPER cold-start weights and the artifact (llm_hyper.py), the LLM client and
training-side CTR features. Serving side: serving/ads/."""
