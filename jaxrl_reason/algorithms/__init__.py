"""Learning algorithms (SFT, Expert Iteration, PPO, RCRL) and the pure pieces they share.

Import modules directly, e.g. `from jaxrl_reason.algorithms import advantages`.
"""
