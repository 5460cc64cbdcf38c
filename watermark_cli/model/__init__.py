"""The watermarking model: encoder and decoder networks, and a model on disk with its card.

Lives here: the networks (torch), loading and saving weights and cards, the shipped model.
May import wm's core and io (atomic writes); torch is imported only where a network is built or loaded.
"""
