"""Shipped descriptor weights and model cards (installed as the data package matcher._models)."""
