"""The stages of a call, one module each, in the order guard/pipeline.py runs them:
authenticate → task → chain → match → (evaluate: guard/policy) → approve → admit → mint → forward →
finish; call.py builds the ToolCall they all take."""
