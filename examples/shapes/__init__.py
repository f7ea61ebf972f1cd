"""The shapes world: a tiny synthetic image/text world (scenes, renders, captions, questions, edits), its `datasets`
builder and an analytic checker, for training and scoring a tiny LLaDA2.0-Uni on a CPU."""
