"""Tools that exist for tests and fidelity, never imported by the engine: tiny untrained checkpoints in every
supported layout (`tiny`) and the parity checks against golden fixtures (`parity`, `parity_dit`,
`parity_encoders`). Their commands are ``python -m backend.scail2.tiny`` and ``python -m backend.scail2.parity``.
"""
