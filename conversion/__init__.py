"""Converters from the original LLaDA2.0 / LLaDA2.0-Uni checkpoint layout to this project's layout."""
