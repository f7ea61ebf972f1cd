"""LLaDA2.0-Uni pixel side for diffusers (decoder pipelines); built on `transformers_llada_uni`."""
