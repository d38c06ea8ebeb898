"""Posture and lifecycle signals: OpenID Shared Signals (SSF 1.0, CAEP 1.0, RISC) received and sent.

    sets.py       a Security Event Token (RFC 8417) checked against its transmitter: keys, aud, iat, jti
    subjects.py   subject identifiers (RFC 9493) and who they name: agents and people
    receiver.py   `Signals`: push (RFC 8935) and poll (RFC 8936) delivery, the effects, stream health
"""
