"""The stages of a call: authenticate → task → match → evaluate → approve → admit → mint → forward."""
